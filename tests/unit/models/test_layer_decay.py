"""Layer-wise learning-rate decay: depths follow the forward pass in every supported family, the
Trainer's optimizer and weight-decay split are kept, and bad recipes fail up front."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from finetune import data
from finetune.models import layer_decay
from finetune.recipe import ModelConfig, RecipeError, recipe_from_dict
from finetune.training.trainer import FinetuneTrainer


def _saved(path: Path) -> nn.Module:
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(path)


def _from_config(kind: str) -> nn.Module:
    import transformers as t

    torch.manual_seed(0)
    vit = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    if kind == "deit":
        return t.DeiTForImageClassificationWithTeacher(t.DeiTConfig(**vit, num_labels=3))
    if kind == "beit":
        return t.BeitForImageClassification(t.BeitConfig(**vit, use_relative_position_bias=True, num_labels=3))
    if kind == "swin":
        config = t.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 2], num_heads=[1, 2], window_size=2, num_labels=3)
        return t.SwinForImageClassification(config)
    if kind == "convnext":
        return t.ConvNextForImageClassification(t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, num_labels=3))
    raise AssertionError(kind)


FAMILIES = ["tiny_vit", "tiny_resnet", "tiny_timm", "deit", "beit", "swin", "convnext"]


@pytest.fixture
def family(request) -> nn.Module:
    name = request.param
    return _saved(request.getfixturevalue(name)) if name.startswith("tiny_") else _from_config(name)


def _forward_positions(model: nn.Module) -> dict[str, int]:
    """Each parameter's place in a forward pass: when the module that holds it first runs."""
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=name: order.append(n)) for name, m in model.named_modules()]
    model.eval()
    with torch.no_grad():
        model(pixel_values=torch.rand(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    first: dict[str, int] = {}
    for i, name in enumerate(order):
        first.setdefault(name, i)
    return {
        f"{m}.{p}" if m else p: first[m]
        for m, module in model.named_modules()
        if m in first
        for p, _ in module.named_parameters(recurse=False)
    }


@pytest.mark.parametrize("family", FAMILIES, indirect=True)
def test_learning_rate_never_decreases_from_the_embeddings_to_the_head(family: nn.Module) -> None:
    groups = layer_decay.param_groups(family, 0.5, 1e-3, 0.0, set())
    lr = {name: g.lr for g in groups for name in g.names}
    assert lr.keys() == {n for n, _ in family.named_parameters()}  # every parameter, once
    positions = _forward_positions(family)
    ordered = [lr[n] for n in sorted(positions, key=positions.get)]
    assert all(a <= b for a, b in zip(ordered, ordered[1:])), "an earlier layer learns faster than a later one"
    depths = len({g.depth for g in groups})
    assert depths >= 4  # stem, at least two blocks, head
    assert ordered[-1] == groups[0].lr == 1e-3  # the head (the Trainer logs the first group) at the recipe's rate
    assert ordered[0] == pytest.approx(1e-3 * 0.5 ** (depths - 1))  # the embeddings, decayed once per depth


def _trainer(model: nn.Module, tmp_path: Path, layer_decay_value: float | None, **args) -> FinetuneTrainer:
    from transformers import TrainingArguments

    arguments = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3, weight_decay=0.05, **args
    )
    transform = data.BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None)
    return FinetuneTrainer(model=model, args=arguments, batch_transform=transform, layer_decay=layer_decay_value)


def _by_parameter(optimizer: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_decay_1_is_the_trainers_own_optimizer(tiny_vit: Path, tmp_path: Path) -> None:
    """Same optimizer, same learning rate and the Trainer's weight-decay split (none for biases
    and LayerNorms) for every parameter: only the grouping differs."""
    model = _saved(tiny_vit)
    plain = _trainer(model, tmp_path, None).create_optimizer()
    decayed = _trainer(model, tmp_path, 1.0).create_optimizer()
    assert type(plain) is type(decayed)
    assert _by_parameter(plain) == _by_parameter(decayed)
    assert {k: v for k, v in plain.defaults.items() if k != "lr"} == {k: v for k, v in decayed.defaults.items() if k != "lr"}


def test_the_recipes_optimizer_gets_the_groups_and_the_log_names_three(tiny_resnet: Path, tmp_path: Path, caplog) -> None:
    model = _saved(tiny_resnet)
    with caplog.at_level(logging.INFO, logger="finetune"):
        optimizer = _trainer(model, tmp_path, 0.5, optim="sgd").create_optimizer()
    assert type(optimizer) is torch.optim.SGD
    names = {id(p): n for n, p in model.named_parameters()}
    settings = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    assert settings["classifier.1.weight"] == (1e-3, 0.05)
    assert settings["classifier.1.bias"] == (1e-3, 0.0)  # biases: no weight decay, as the Trainer does
    stem = settings["resnet.embedder.embedder.convolution.weight"]
    assert stem[0] < 1e-3 and stem[1] == 0.05
    line = next(r.getMessage() for r in caplog.records if "model.layer_decay" in r.getMessage())
    assert all(word in line for word in ("first 0.001", "middle", "last"))


def test_partial_trains_its_blocks_at_the_full_fine_tunes_rates(tiny_vit: Path) -> None:
    from finetune.models import strategies

    full = _saved(tiny_vit)
    partial = _saved(tiny_vit)
    cfg = ModelConfig(strategy="partial", unfreeze_last_n=1)
    strategies.of(cfg).prepare(partial, cfg, ["classifier.weight", "classifier.bias"])
    rates = {n: g.lr for g in layer_decay.param_groups(full, 0.5, 1.0, 0.0, set()) for n in g.names}
    groups = layer_decay.param_groups(partial, 0.5, 1.0, 0.0, set())
    trained = {n for n, p in partial.named_parameters() if p.requires_grad}
    assert {n for g in groups for n in g.names} == trained  # frozen parameters are in no group
    assert all(g.lr == rates[n] for g in groups for n in g.names)


def test_an_optimizer_that_makes_its_own_groups_is_refused(tiny_vit: Path, tmp_path: Path) -> None:
    def factory():  # as Muon's: not an Optimizer class, called to make one
        raise AssertionError("must not be called")

    trainer = _trainer(_saved(tiny_vit), tmp_path, 0.7)
    trainer.optimizer_cls_and_kwargs = (factory, {})
    with pytest.raises(layer_decay.LayerDecayError, match="builds its own parameter groups"):
        trainer.create_optimizer()


def test_a_model_without_a_layer_map_is_named() -> None:
    from transformers import MobileNetV2Config

    with pytest.raises(layer_decay.LayerDecayError, match="no layer map for model type 'mobilenet_v2'"):
        layer_decay.check_supported(MobileNetV2Config())


def _recipe(**model) -> dict:
    return {
        "description": "d",
        "model": {"name_or_path": "m", **model},
        "data": {"dataset": "d"},
        "output_dir": "o",
    }


@pytest.mark.parametrize(
    "model, message",
    [
        ({"layer_decay": 0}, "'model.layer_decay' must be in (0, 1]"),
        ({"layer_decay": 1.5}, "'model.layer_decay' must be in (0, 1]"),
        ({"layer_decay": -0.5}, "'model.layer_decay' must be in (0, 1]"),
        ({"layer_decay": 0.75, "strategy": "linear_probe"}, "which 'linear_probe' does not train"),
        ({"layer_decay": 0.75, "feature_cache": False, "strategy": "linear_probe"}, "which 'linear_probe' does not train"),
        ({"layer_decay": 0.75, "strategy": "lora"}, "which 'lora' keeps frozen (its adapters train at one rate)"),
    ],
)
def test_bad_layer_decay_is_a_recipe_error(model: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=re.escape(message)):
        recipe_from_dict(_recipe(**model))


def test_layer_decay_with_an_optimizer_that_groups_itself_is_a_recipe_error() -> None:
    raw = _recipe(layer_decay=0.8) | {"training": {"optim": "galore_adamw"}}
    with pytest.raises(RecipeError, match="'training.optim' 'galore_adamw' builds its own parameter groups"):
        recipe_from_dict(raw)


@pytest.mark.parametrize("strategy", ["full", "partial", "lp_ft"])
def test_layer_decay_combines_with_the_strategies_that_train_layers(strategy: str) -> None:
    assert recipe_from_dict(_recipe(layer_decay=1.0, strategy=strategy)).model.layer_decay == 1.0
