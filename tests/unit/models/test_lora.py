"""lora.py: adapters on each family's layers, only adapters and head trained, strict checkpoints, the merged model saved."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from finetune.models import classifier as model_lib
from finetune.models import lora, strategies
from finetune.recipe import ModelConfig, RecipeError, recipe_from_dict
from tests.helpers.models import save_tiny

NAMES = ["a", "b", "c", "d"]
ATTENTION = {"q_proj", "k_proj", "v_proj"}


def load(path: Path, **lora_keys):
    cfg = ModelConfig(name_or_path=str(path), strategy="lora", **lora_keys)
    processor = model_lib.load_processor(cfg, None)
    return model_lib.load_model(cfg, NAMES, processor)


@pytest.fixture(scope="module")
def families(tmp_path_factory, tiny_vit, tiny_resnet, tiny_timm) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    paths = {"vit": tiny_vit, "resnet": tiny_resnet, "timm": tiny_timm}
    for kind in ("convnext", "swin", "deit", "beit"):
        paths[kind] = save_tiny(kind, root / kind)
    return paths


def _adapted(model: nn.Module) -> set[str]:
    """The base model's names of the layers that carry an adapter."""
    return {
        name.removeprefix("base_model.model.").removesuffix(".lora_A")
        for name, _ in model.named_modules()
        if name.endswith(".lora_A")
    }


@pytest.mark.parametrize("kind", ["vit", "deit", "beit", "swin", "resnet", "convnext", "timm"])
def test_only_adapters_and_the_head_train_on_each_familys_default_layers(kind: str, families) -> None:
    plain = model_lib.load_model(
        ModelConfig(name_or_path=str(families[kind])), NAMES, model_lib.load_processor(ModelConfig(name_or_path=str(families[kind])), None)
    ).model
    loaded = load(families[kind], lora_rank=2)
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    head_copies = {
        f"base_model.model.{h.rsplit('.', 1)[0]}.modules_to_save.default.{h.rsplit('.', 1)[1]}" for h in loaded.head
    }
    assert head_copies <= trainable, "the head must train fully"
    assert all(".lora_" in n for n in trainable - head_copies), trainable - head_copies
    adapted = _adapted(loaded.model)
    if kind in ("vit", "deit", "beit", "swin"):
        assert {n.rsplit(".", 1)[1] for n in adapted} == ATTENTION
        assert len(adapted) == 3 * sum(name.endswith(".q_proj") for name, _ in plain.named_modules())
    else:  # every Linear and ungrouped convolution outside the head
        head_modules = {h.rsplit(".", 1)[0] for h in loaded.head}
        expected = {
            n for n, m in plain.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and getattr(m, "groups", 1) == 1 and n not in head_modules
        }
        assert adapted == expected
        assert not any(getattr(m, "groups", 1) > 1 for n, m in plain.named_modules() if n in adapted)
    summary = loaded.lora
    assert summary.rank == 2 and summary.alpha == 2 and summary.dropout == 0.1
    assert loaded.trainable == summary.adapter_parameters + summary.head_parameters
    assert summary.head_parameters == sum(p.numel() for n, p in plain.named_parameters() if n in loaded.head)
    assert loaded.total == sum(p.numel() for p in plain.parameters()) + summary.adapter_parameters
    assert 0 < loaded.trainable < loaded.total


def test_the_log_states_rank_alpha_layers_and_trained_parameters(tiny_vit: Path) -> None:
    loaded = load(tiny_vit, lora_rank=4, lora_alpha=8, lora_dropout=0.0)
    line = loaded.describe(ModelConfig(strategy="lora"))
    assert line.startswith(f"strategy lora: {loaded.trainable:,} of {loaded.total:,} parameters trainable")
    assert "LoRA rank 4, alpha 8 (scale 2), dropout 0, on 6 layers (k_proj, q_proj, v_proj)" in line
    assert f"{loaded.lora.adapter_parameters:,} adapter + {loaded.lora.head_parameters:,} head parameters" in line


def _perturb(model: nn.Module, seed: int = 0) -> None:
    """Random values everywhere (lora_B starts at zero: an untrained adapter changes nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.mark.parametrize("kind, variant", [("vit", "lora"), ("resnet", "lora"), ("resnet", "dora"), ("timm", "lora")])
def test_the_merged_model_gives_the_adapted_models_logits_and_loads_as_plain_transformers(
    kind: str, variant: str, families, tmp_path: Path
) -> None:
    from transformers import AutoModelForImageClassification

    loaded = load(families[kind], lora_rank=4, lora_variant=variant)
    model = loaded.model
    _perturb(model)
    model.eval()
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapted = model(pixel_values=pixels).logits
        with model.disable_adapter():
            base = model(pixel_values=pixels).logits
    assert not torch.allclose(adapted, base, atol=1e-3), "the adapters must change the output"
    merged = lora.merged_copy(model)
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model.get_base_model())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, adapted, atol=1e-5, rtol=1e-4)
    # The wrapped model is untouched by the merge: it goes on training after a save.
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).logits, adapted)


def test_frozen_batchnorm_stays_in_eval_mode(tiny_resnet: Path) -> None:
    loaded = load(tiny_resnet, lora_rank=2)
    model = loaded.model
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model.train()
    model(pixel_values=torch.randn(4, 3, 32, 32) * 5 + 3)
    assert not bn.training and torch.equal(bn.running_mean, before)
    dropout = next(m for n, m in model.named_modules() if n.endswith("lora_dropout.default"))
    assert dropout.training, "the adapters' dropout works in training"


def test_a_checkpoint_restores_every_trained_tensor_and_a_foreign_one_is_refused(tiny_vit: Path, tmp_path: Path) -> None:
    trained = load(tiny_vit, lora_rank=4).model
    _perturb(trained)
    trained.save_pretrained(tmp_path / "checkpoint")  # what the Trainer writes into a checkpoint
    fresh = load(tiny_vit, lora_rank=4).model
    lora.load_checkpoint(fresh, tmp_path / "checkpoint")
    ours, theirs = fresh.state_dict(), trained.state_dict()
    frozen = {n for n, p in trained.named_parameters() if not p.requires_grad}
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k not in frozen)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        n for n, p in trained.named_parameters() if p.requires_grad
    }
    other = load(tiny_vit, lora_rank=4, lora_target_modules=["q_proj"]).model
    with pytest.raises(lora.LoraError, match="does not fit this model's adapters"):
        lora.load_checkpoint(other, tmp_path / "checkpoint")


def test_resume_and_best_model_loads_go_through_the_strict_adapter_loader(tiny_vit: Path, tmp_path: Path) -> None:
    """The Trainer's loads of a checkpoint (resume, load_best_model_at_end) reach
    compat.reload_weights, which the trainer gives lora.load_if_adapted for a peft model: the
    transformers loader would look for model.safetensors, which these checkpoints lack."""
    from finetune.utils import compat

    trained = load(tiny_vit, lora_rank=4).model
    _perturb(trained)
    trained.save_pretrained(tmp_path / "checkpoint")
    fresh = load(tiny_vit, lora_rank=4).model
    trainer = SimpleNamespace(model=fresh, accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    compat.reload_weights(trainer, str(tmp_path / "checkpoint"), lora.load_if_adapted)
    theirs = dict(trained.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in fresh.named_parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "targets, needle",
    [
        (["nonexistent"], "'nonexistent' names no layer of this ViTForImageClassification; use names of its Linear"),
        (["classifier"], "names the classification head (classifier)"),
        (["layernorm"], "a LayerNorm; LoRA adapts Linear and Conv layers only"),
    ],
)
def test_target_modules_that_do_not_fit_are_one_line_errors(targets, needle, tiny_vit: Path) -> None:
    with pytest.raises(lora.LoraError, match="model.lora_target_modules: ") as err:
        load(tiny_vit, lora_target_modules=targets)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_target_modules_override_the_default_and_depthwise_convolutions_are_refused(tiny_vit: Path, tiny_timm: Path) -> None:
    loaded = load(tiny_vit, lora_target_modules=["q_proj", "vit.layers.1.mlp.fc2"])
    assert _adapted(loaded.model) == {"vit.layers.0.attention.q_proj", "vit.layers.1.attention.q_proj", "vit.layers.1.mlp.fc2"}
    assert loaded.lora.layer_names == ["fc2", "q_proj"]
    with pytest.raises(lora.LoraError, match="grouped \\(depthwise\\) convolution"):
        load(tiny_timm, lora_target_modules=["conv_dw"])


def recipe(**model) -> dict:
    return {
        "description": "d",
        "model": {"name_or_path": "some/model", **model},
        "data": {"dataset": "some/data"},
        "output_dir": "out",
    }


@pytest.mark.parametrize(
    "model, needle",
    [
        ({"lora_rank": 8}, "'model.lora_rank' applies only with 'model.strategy' 'lora' (it is 'full')"),
        ({"strategy": "linear_probe", "lora_target_modules": ["q_proj"]}, "'model.lora_target_modules' applies only with"),
        ({"strategy": "partial", "lora_variant": "dora"}, "'model.lora_variant' applies only with"),
        ({"strategy": "lora", "lora_rank": 0}, "'model.lora_rank' must be >= 1"),
        ({"strategy": "lora", "lora_alpha": 0}, "'model.lora_alpha' must be > 0"),
        ({"strategy": "lora", "lora_dropout": 1.0}, "'model.lora_dropout' must be in [0, 1)"),
        ({"strategy": "lora", "lora_target_modules": []}, "'model.lora_target_modules' must list one or more"),
        ({"strategy": "lora", "lora_variant": "vera"}, "'model.lora_variant' must be one of 'lora', 'dora'"),
        ({"strategy": "lora", "probe_solver": "lbfgs"}, "'model.probe_solver' 'lbfgs' fits the head on cached features"),
    ],
)
def test_recipe_errors(model: dict, needle: str) -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(recipe(**model), "r.json")
    assert any(line.startswith("r.json: ") and needle in line for line in str(err.value).splitlines()), str(err.value)


def test_a_valid_lora_recipe_passes() -> None:
    model = recipe_from_dict(
        recipe(strategy="lora", lora_rank=8, lora_alpha=16, lora_dropout=0.0, lora_target_modules=["qkv"], lora_variant="dora")
    ).model
    assert lora.settings(model) == ("dora", 8, 16.0, 0.0)
    assert lora.settings(recipe_from_dict(recipe(strategy="lora")).model) == ("lora", 16, 16.0, 0.1)


def test_lora_without_peft_installed_names_the_extra(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(RecipeError, match=r"needs the peft library: peft not installed; it comes with the optional extra 'transfer': pip install -e \"\.\[transfer\]\""):
        recipe_from_dict(recipe(strategy="lora"), "r.json")
    recipe_from_dict(recipe(strategy="full"), "r.json")  # the other strategies do not need it


def test_sharded_training_is_refused_before_anything_loads(monkeypatch) -> None:
    cfg = ModelConfig(name_or_path="x", strategy="lora")
    with pytest.raises(model_lib.ModelError, match="'lora' does not run under FSDP or DeepSpeed"):
        strategies.of(cfg).check_fits(SimpleNamespace(fsdp="full_shard", deepspeed=None))
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    strategies.of(cfg).check_fits(SimpleNamespace(fsdp="", deepspeed=None))
    full = ModelConfig(name_or_path="x")
    strategies.of(full).check_fits(SimpleNamespace(fsdp="full_shard", deepspeed=None))
