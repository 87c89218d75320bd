"""classifier.py: new heads, strategies, processors, the TimmWrapper num_classes trap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune.models import classifier as model_lib
from finetune.recipe import ModelConfig
from tests.helpers.models import save_tiny

NAMES = ["a", "b", "c", "d"]


def load(path: Path, strategy: str = "full", n: int = 2, names: list[str] = NAMES):
    cfg = ModelConfig(name_or_path=str(path), strategy=strategy, unfreeze_last_n=n)
    processor = model_lib.load_processor(cfg, None)
    return model_lib.load_model(cfg, names, processor), processor


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_resnet", "tiny_timm"])
def test_new_head_has_the_user_classes_and_only_head_is_reinitialised(fixture: str, request) -> None:
    loaded, _ = load(request.getfixturevalue(fixture))
    config = loaded.model.config
    assert config.num_labels == 4 and config.id2label == dict(enumerate(NAMES))
    assert config.label2id == {n: i for i, n in enumerate(NAMES)}
    assert loaded.reinitialised and set(loaded.reinitialised) <= set(loaded.head)
    out = loaded.model(pixel_values=torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 4)


def test_linear_probe_trains_only_the_head_and_keeps_batchnorm_frozen(tiny_resnet: Path) -> None:
    loaded, _ = load(tiny_resnet, "linear_probe")
    m = loaded.model
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable == loaded.head == ["classifier.1.bias", "classifier.1.weight"] or set(trainable) == set(loaded.head)
    bn = next(mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    m.train()
    m(pixel_values=torch.randn(4, 3, 32, 32) * 5 + 3)
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert m.training  # the head itself is in training mode


def test_full_strategy_updates_batchnorm(tiny_resnet: Path) -> None:
    loaded, _ = load(tiny_resnet, "full")
    m = loaded.model
    bn = next(mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    m.train()
    m(pixel_values=torch.randn(4, 3, 32, 32) * 5 + 3)
    assert not torch.equal(bn.running_mean, before)
    assert loaded.trainable == loaded.total


def test_partial_unfreezes_the_last_blocks_and_what_follows(tiny_vit: Path) -> None:
    loaded, _ = load(tiny_vit, "partial", n=1)
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("vit.layers.1.") for n in trainable)
    assert not any(n.startswith("vit.layers.0.") for n in trainable)
    assert not any(n.startswith("vit.embeddings") for n in trainable)
    assert {"vit.layernorm.weight", "classifier.weight"} <= trainable
    with pytest.raises(model_lib.ModelError, match="unfreeze_last_n: 5 but the model has 2 blocks"):
        load(tiny_vit, "partial", n=5)


def test_partial_on_timm_uses_its_blocks(tiny_timm: Path) -> None:
    loaded, _ = load(tiny_timm, "partial", n=1)
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("timm_model.conv_stem") for n in trainable)
    assert any(n.startswith("timm_model.blocks.") for n in trainable)
    assert 0 < loaded.trainable < loaded.total


def test_timm_config_with_num_classes_in_model_args_still_loads(tiny_timm: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "timm"
    shutil.copytree(tiny_timm, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model_args"] = {"num_classes": 7}
    (copy / "config.json").write_text(json.dumps(config))
    loaded, _ = load(copy)
    assert loaded.model.config.num_labels == 4


def test_image_size_resizes_processors(tiny_resnet: Path, tiny_timm: Path, tiny_vit: Path) -> None:
    from PIL import Image

    image = Image.new("RGB", (50, 40))
    for path in (tiny_resnet, tiny_timm):
        processor = model_lib.load_processor(ModelConfig(name_or_path=str(path)), 48)
        assert processor(images=[image], return_tensors="pt")["pixel_values"].shape[-2:] == (48, 48)
    with pytest.raises(model_lib.ModelError, match="fixed input size 32"):
        model_lib.load_processor(ModelConfig(name_or_path=str(tiny_vit)), 48)


def test_checkpoint_without_backbone_weights_is_refused(tmp_path: Path) -> None:
    """A checkpoint whose backbone weights are missing is the wrong model, not a new head."""
    from safetensors.torch import load_file, save_file
    from transformers import ViTImageProcessor

    from tests.helpers.models import make_tiny_vit

    path = make_tiny_vit(tmp_path / "vit")
    weights = load_file(path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "encoder.layer.0." not in k}, path / "model.safetensors")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    with pytest.raises(model_lib.ModelError, match="lacks pretrained weights outside the classification head"):
        load(path)


def test_missing_model_is_a_clear_error() -> None:
    with pytest.raises(model_lib.ModelError, match="model.name_or_path: cannot load 'nobody/no-such-model'"):
        model_lib.load_processor(ModelConfig(name_or_path="nobody/no-such-model"), None)


@pytest.mark.parametrize("name", ["./models/mine", "../x", "~/no-such-finetune-model", "models/org/name", "ABS"])
def test_missing_local_folder_is_named_as_missing(name: str, tmp_path: Path, tiny_vit: Path) -> None:
    """The Hub client would say only that the name is not a valid repo id."""
    name = str(tmp_path / "none") if name == "ABS" else name
    cfg = ModelConfig(name_or_path=name)
    expected = (
        f"model.name_or_path: local folder '{name}' does not exist; check the path, or use a Hub id like org/name"
    )
    with pytest.raises(model_lib.ModelError) as err:
        model_lib.load_processor(cfg, None)
    assert str(err.value) == expected
    processor = model_lib.load_processor(ModelConfig(name_or_path=str(tiny_vit)), None)
    with pytest.raises(model_lib.ModelError, match="does not exist"):
        model_lib.load_model(cfg, NAMES, processor)


def test_local_folder_under_home_is_expanded(tiny_vit: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tiny_vit.parent))
    processor = model_lib.load_processor(ModelConfig(name_or_path=f"~/{tiny_vit.name}"), None)
    loaded = model_lib.load_model(ModelConfig(name_or_path=f"~/{tiny_vit.name}"), NAMES, processor)
    assert loaded.model.config.num_labels == len(NAMES)


def test_timm_class_names_survive_save_and_reload(tiny_timm: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    loaded, _ = load(tiny_timm)
    loaded.model.save_pretrained(tmp_path / "saved")
    config = AutoConfig.from_pretrained(tmp_path / "saved")
    assert [config.id2label[i] for i in range(4)] == NAMES


@pytest.mark.parametrize("kind", ["convnext", "swin", "deit", "beit"])
@pytest.mark.parametrize("strategy", ["full", "linear_probe", "partial"])
def test_other_hf_families(kind: str, strategy: str, tmp_path: Path) -> None:
    path = save_tiny(kind, tmp_path / kind)
    loaded, processor = load(path, strategy, n=1)
    assert set(loaded.reinitialised) <= set(loaded.head) and loaded.head
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    if strategy == "linear_probe":
        assert trainable == set(loaded.head)
    elif strategy == "partial":
        assert set(loaded.head) < trainable and loaded.trainable < loaded.total
    pixels = processor(images=[torch.zeros(3, 40, 40, dtype=torch.uint8)], return_tensors="pt")["pixel_values"]
    assert loaded.model(pixel_values=pixels).logits.shape == (1, 4)


def test_channels_last_is_automatic_only_for_cnns_on_cuda_or_cpu_without_sharding(tiny_resnet: Path, tiny_vit: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    resnet, vit = load(tiny_resnet)[0].model, load(tiny_vit)[0].model
    assert model_lib.is_convolutional(resnet) and not model_lib.is_convolutional(vit)
    auto = ModelConfig(name_or_path="x")
    assert model_lib.use_channels_last(resnet, auto) and not model_lib.use_channels_last(vit, auto)  # the CPU
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert not model_lib.use_channels_last(resnet, auto)  # another accelerator: not measured there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert model_lib.use_channels_last(resnet, auto) and not model_lib.use_channels_last(vit, auto)
    assert not model_lib.use_channels_last(resnet, auto, SimpleNamespace(fsdp="full_shard", deepspeed=None))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert not model_lib.use_channels_last(resnet, auto)
    assert model_lib.use_channels_last(vit, ModelConfig(name_or_path="x", channels_last=True))  # the recipe decides
    assert not model_lib.use_channels_last(resnet, ModelConfig(name_or_path="x", channels_last=False))


# ------------------------------------------------ DDP: does every trainable tensor get a gradient?


@pytest.mark.parametrize("strategy", ["full", "partial", "linear_probe"])
@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_resnet", "tiny_timm"])
def test_every_trainable_tensor_gets_a_gradient(fixture: str, strategy: str, request) -> None:
    """What lets train.py wrap DDP with find_unused_parameters off: one training step's
    forward and backward (the model's own loss) reaches every tensor the strategy trains,
    and unused_parameters, which decides it at run time, agrees."""
    loaded, _ = load(request.getfixturevalue(fixture), strategy, n=1)
    m = loaded.model
    assert model_lib.unused_parameters(m, (32, 32)) == []
    m.train()
    m(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []


def test_unused_parameters_finds_a_tensor_no_step_reaches(tiny_resnet: Path) -> None:
    """DINOv2 keeps a mask token for masked-image pretraining that classification never uses:
    DDP must then look for unused parameters. The probe leaves no trace in the model."""
    import transformers as tf

    torch.manual_seed(0)
    dino = tf.Dinov2ForImageClassification(
        tf.Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3)
    )
    assert model_lib.unused_parameters(dino, (32, 32)) == ["dinov2.embeddings.mask_token"]

    resnet = load(tiny_resnet)[0].model.eval()
    buffers = {n: b.clone() for n, b in resnet.named_buffers()}
    rng = torch.get_rng_state()
    assert model_lib.unused_parameters(resnet, (32, 32)) == []
    assert not resnet.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(b, buffers[n]) for n, b in resnet.named_buffers())
    assert all(p.grad is None for p in resnet.parameters())


# ------------------------------------------------------------------------- multi-label


def load_multi(path: Path, multi_label: bool, strategy: str = "full", from_scratch: bool = False):
    cfg = ModelConfig(name_or_path=str(path), strategy=strategy, from_scratch=from_scratch)
    return model_lib.load_model(cfg, NAMES, model_lib.load_processor(cfg, None), multi_label=multi_label)


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_resnet", "tiny_timm"])
def test_a_multi_label_model_says_so_in_its_config_and_keeps_its_head(fixture: str, request, tmp_path: Path) -> None:
    from transformers import AutoConfig

    from finetune.data.multi_label import PROBLEM_TYPE, is_multi_label

    path = request.getfixturevalue(fixture)
    multi = load_multi(path, True).model
    single = load_multi(path, False).model
    assert is_multi_label(multi.config) and multi.config.problem_type == PROBLEM_TYPE
    assert not is_multi_label(single.config)
    x = torch.randn(2, 3, 32, 32)
    assert multi(pixel_values=x).logits.shape == single(pixel_values=x).logits.shape == (2, 4)
    assert {n: p.shape for n, p in multi.named_parameters()} == {n: p.shape for n, p in single.named_parameters()}
    multi.save_pretrained(tmp_path / "saved")
    assert is_multi_label(AutoConfig.from_pretrained(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["problem_type"] == PROBLEM_TYPE


def test_from_scratch_models_get_the_problem_type_too(tiny_vit: Path) -> None:
    from finetune.data.multi_label import is_multi_label

    assert is_multi_label(load_multi(tiny_vit, True, from_scratch=True).model.config)
    assert not is_multi_label(load_multi(tiny_vit, False, from_scratch=True).model.config)


def test_a_multi_label_base_model_passes_neither_its_task_nor_its_thresholds_on(tiny_vit: Path, tmp_path: Path) -> None:
    """A base checkpoint fine-tuned for multi-label data: a single-label run on it drops its
    problem_type, and no run keeps thresholds tuned for other classes."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from finetune.data import multi_label

    base = AutoModelForImageClassification.from_pretrained(tiny_vit, problem_type=multi_label.PROBLEM_TYPE)
    multi_label.set_thresholds(base.config, ["x", "y", "z"], [0.2, 0.7, 0.9])
    base.save_pretrained(tmp_path / "base")
    AutoImageProcessor.from_pretrained(tiny_vit).save_pretrained(tmp_path / "base")
    assert multi_label.is_multi_label(json.loads((tmp_path / "base" / "config.json").read_text()))
    single = load_multi(tmp_path / "base", False).model.config
    assert single.problem_type is None and not hasattr(single, multi_label.THRESHOLDS_KEY)
    again = load_multi(tmp_path / "base", True).model.config
    assert multi_label.is_multi_label(again) and not hasattr(again, multi_label.THRESHOLDS_KEY)
    assert multi_label.thresholds(again, NAMES).tolist() == [multi_label.DEFAULT_THRESHOLD] * 4


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_timm"])
def test_the_pipeline_applies_a_sigmoid_to_a_saved_multi_label_model(fixture: str, request, tmp_path: Path) -> None:
    """What `pipeline("image-classification")` does with a finished multi-label run's folder."""
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    path = request.getfixturevalue(fixture)
    loaded, processor = load(path)
    model_lib.set_problem_type(loaded.model.config, True)
    with torch.no_grad():  # several positive logits: sigmoids then sum to well over 1, unlike a softmax
        for name in loaded.head:
            dict(loaded.model.named_parameters())[name].normal_(0, 0.5).add_(2.0 if name.endswith("bias") else 0.0)
    out = tmp_path / "run"
    loaded.model.save_pretrained(out)
    processor.save_pretrained(out)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    scores = pipeline("image-classification", model=str(out), device="cpu")(image, top_k=4)
    got = {s["label"]: s["score"] for s in scores}
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = torch.sigmoid(loaded.model.eval()(pixel_values=pixels).logits[0])
    assert sum(got.values()) > 1.5
    for i, name in enumerate(NAMES):
        assert got[name] == pytest.approx(float(expected[i]), abs=1e-5)
