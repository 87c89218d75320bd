"""The linear probe on cached features end to end: features from several processes, one backbone
pass per image, and runs through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.models import classifier as model_lib
from finetune.probe import features
from finetune.recipe import recipe_from_dict
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.features import batch_transform, decode_folder, load_probe_model
from tests.helpers.images import make_image_folder

_SHARDED = """\
import sys
sys.path.insert(0, {root!r})
import torch
from accelerate import PartialState
from datasets import load_from_disk
from transformers import AutoImageProcessor, AutoModelForImageClassification

from finetune import data
from finetune.probe import features
from finetune.probe.engine import FeatureRuntime

state = PartialState(cpu=True)
assert state.num_processes == 3, state
model = AutoModelForImageClassification.from_pretrained({model!r})
decoded = load_from_disk({decoded!r})
# As the pipeline builds it: images stored smaller than the model's input are resized per batch.
transform = data.BatchTransform.for_processor(AutoImageProcessor.from_pretrained({model!r}), None)
cached = features.compute_features(model, decoded, transform, device="cpu", batch_size=2)
# The same pass by ONNX Runtime: every rank exports and checks its own session.
runtime = FeatureRuntime("onnxruntime")
onnx = features.compute_features(model, decoded, transform, device="cpu", batch_size=2, runtime=runtime)
assert runtime.runner is not None, runtime.chosen
if state.is_main_process:
    torch.save({{"features": cached.features, "labels": cached.labels, "onnx": onnx.features, "onnx_labels": onnx.labels}}, {out!r})
"""


@pytest.mark.e2e
def test_features_from_three_processes_are_the_direct_forward_pass_in_dataset_order(
    tiny_vit: Path, tmp_path: Path, monkeypatch
) -> None:
    """Three ranks (torchrun, gloo) share 7 images: 3 + 2 + 2 real rows, the last two
    shares padded by one row each (so padding sits between real rows once gathered), in
    batches of 2; rank 0 gets back the features that a single forward pass over the whole
    split gives, in dataset order, padding dropped; by PyTorch, and by ONNX Runtime (whose
    fixed batch pads rank 0's last batch of 1 once more)."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    loaded, processor = load_probe_model(tiny_vit)
    model_dir = tmp_path / "probe-model"
    loaded.model.save_pretrained(model_dir)  # the same random head on both ranks
    processor.save_pretrained(model_dir)
    decoded = decode_folder(make_image_folder(tmp_path / "images", per_class=3, splits=("train",)), processor)
    decoded = decoded.select([8, 0, 4, 2, 6, 1, 7])  # 7 rows, classes interleaved
    decoded.save_to_disk(tmp_path / "decoded")
    out = tmp_path / "features.pt"
    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED.format(
        root=str(ROOT), model=str(model_dir), decoded=str(tmp_path / "decoded"), out=str(out),
    ))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "3", "--master_port", "29537"]
    result = subprocess.run(command + [str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = torch.load(out)

    # The reference: one forward pass over all 7 images, the head's input captured.
    captured = {}
    _, head = features.find_head(loaded.model)
    handle = head.register_forward_hook(lambda m, args, output: captured.update(x=args[0]))
    transform = batch_transform(processor)
    loaded.model.eval()
    with torch.inference_mode():
        loaded.model(pixel_values=transform(decoded[:]["pixel_values"], train=False))
    handle.remove()
    assert sharded["labels"].tolist() == list(decoded["labels"][:])
    assert sharded["features"].shape == captured["x"].shape == (7, head.in_features)
    torch.testing.assert_close(sharded["features"], captured["x"], rtol=1e-5, atol=1e-5)
    assert sharded["onnx_labels"].tolist() == list(decoded["labels"][:])
    torch.testing.assert_close(sharded["onnx"], captured["x"], rtol=1e-3, atol=1e-4)


def _recipe(tmp_path: Path, model: Path, images: Path, name: str, **extra) -> dict:
    path = write_recipe(
        tmp_path / f"{name}.json",
        model,
        images,
        tmp_path / name,
        model__strategy="linear_probe",
        metrics=["accuracy"],
        **extra,
    )
    raw = json.loads(path.read_text())
    raw["training"].update(num_train_epochs=8, learning_rate=0.05, save_strategy="no")
    return raw


def _train(tmp_path: Path, raw: dict) -> str:
    """Run ``finetune train`` on a recipe dict through the real command line; its log."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(raw))
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr + result.stdout


@pytest.mark.e2e
def test_backbone_runs_once_per_image_and_matches_the_per_step_path(tiny_vit: Path, tmp_path: Path, monkeypatch) -> None:
    """One backbone forward per image in all; the head then learns what the per-step path learns."""
    from finetune.training import train as train_lib

    images = make_image_folder(tmp_path / "images")
    seen: list[int] = []
    heads: dict[bool, torch.Tensor] = {}
    real_load = model_lib.load_model

    def counting_load(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        # Every backbone pass goes through the full model's forward: count the images there.
        loaded.model.register_forward_pre_hook(lambda m, a, kw: seen.append(len(kw["pixel_values"])), with_kwargs=True)
        return loaded

    monkeypatch.setattr(model_lib, "load_model", counting_load)
    results = {}
    for cache in (True, False):
        seen.clear()
        # No augmentation, so both paths see the same pixels and can be compared.
        raw = _recipe(tmp_path, tiny_vit, images, f"cache-{cache}", data__augment={"crop_scale": None, "hflip": False})
        raw["model"]["feature_cache"] = cache
        # Only the probe's own passes are counted: temperature scaling's check of the head runs
        # one small forward of its own.
        raw["evaluation"] = {"calibrate": False}
        results[cache] = train_lib.train(recipe_from_dict(raw))
        heads[cache] = load_file(tmp_path / f"cache-{cache}" / "model.safetensors")["classifier.weight"]
        if cache:
            report = json.loads((tmp_path / "cache-True" / "data_report.json").read_text())["splits"]
            images_total = sum(split["images"] for split in report.values())
            assert sum(seen) == images_total  # train + validation + eval, each image once
            assert max(seen) <= 8  # batches of per_device_eval_batch_size, not one giant call
        else:
            assert sum(seen) > 3 * images_total  # the per-step path runs it every step and every evaluation
    assert results[True]["eval_accuracy"] >= 0.9
    assert results[True]["eval_accuracy"] == results[False]["eval_accuracy"]
    torch.testing.assert_close(heads[True], heads[False], rtol=1e-4, atol=1e-5)


@pytest.mark.e2e
def test_cli_linear_probe_with_feature_cache_gives_a_normal_checkpoint(tiny_resnet: Path, tmp_path: Path) -> None:
    from transformers import pipeline

    images = make_image_folder(tmp_path / "images")
    out = tmp_path / "probe"
    raw = _recipe(tmp_path, tiny_resnet, images, "probe")
    raw["training"]["save_strategy"] = "epoch"
    raw["model"]["feature_runtime"] = "onnxruntime"  # the other engine, through the whole run
    log = _train(tmp_path, raw)
    assert "feature cache: the frozen backbone ran once" in log
    assert "onnxruntime (model.feature_runtime onnxruntime; exported in" in log
    # Augmentation was requested: one line says it does not apply, and the report notes it.
    assert sum("does not apply" in line for line in log.splitlines()) == 1
    notes = json.loads((out / "data_report.json").read_text())["notes"]
    assert any("does not apply" in note for note in notes)
    for name in ("train_results.json", "eval_results.json", "all_results.json", "trainer_state.json", "recipe.json", "README.md", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert eval_results["eval_accuracy"] >= 0.9
    assert json.loads((out / "train_results.json").read_text())["feature_cache_images"] > 0

    base, trained = load_file(tiny_resnet / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(base) == set(trained)
    changed = {k for k in base if base[k].shape != trained[k].shape or not torch.equal(base[k], trained[k])}
    assert changed == {"classifier.1.weight", "classifier.1.bias"}  # the backbone is bitwise the base model's
    # Per-epoch checkpoints hold only the head (the backbone never changes).
    checkpoint = sorted(out.glob("checkpoint-*"))[-1]
    assert set(load_file(checkpoint / "model.safetensors")) == {"linear.weight", "linear.bias"}

    classifier = pipeline("image-classification", model=str(out))
    top = classifier(str(next((images / "test" / "blue").iterdir())))[0]
    assert top["label"] == "blue"


@pytest.mark.e2e
def test_cli_full_fine_tune_in_channels_last(tiny_resnet: Path, tmp_path: Path) -> None:
    # On CUDA this is the default for CNNs; forced here to run the same path on CPU.
    from transformers import pipeline

    images = make_image_folder(tmp_path / "images")
    raw = _recipe(tmp_path, tiny_resnet, images, "cl", model__channels_last=True)
    raw["model"]["strategy"] = "full"
    raw["training"].update(num_train_epochs=2, save_strategy="epoch")
    log = _train(tmp_path, raw)
    assert "memory format channels-last" in log
    out = tmp_path / "cl"
    trained = load_file(out / "model.safetensors")
    assert all(t.is_contiguous() for t in trained.values())  # saved in the usual layout
    classifier = pipeline("image-classification", model=str(out))
    assert classifier(str(next((images / "test" / "blue").iterdir())))[0]["label"] in {"red", "green", "blue"}


@pytest.mark.e2e
def test_cli_lbfgs_head_chooses_l2_on_validation_and_saves_a_normal_model(tiny_resnet: Path, tmp_path: Path) -> None:
    from transformers import pipeline

    images = make_image_folder(tmp_path / "images", per_class=8)
    out = tmp_path / "lbfgs"
    raw = _recipe(tmp_path, tiny_resnet, images, "lbfgs", model__probe_solver="lbfgs", model__probe_l2=[10.0, 1e-3])
    raw["data"]["validation_fraction"] = 0.25
    log = _train(tmp_path, raw)
    assert "learning_rate" in log and "do(es) not apply with model.probe_solver 'lbfgs'" in log  # said, not ignored
    train_results = json.loads((out / "train_results.json").read_text())
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    tried = [e for e in history if "probe_l2" in e and "validation_accuracy" in e]
    assert sorted(e["probe_l2"] for e in tried) == [1e-3, 10.0]
    best = max(tried, key=lambda e: (e["validation_accuracy"], -e["validation_loss"]))
    assert train_results["probe_solver"] == "lbfgs" and train_results["probe_l2"] == best["probe_l2"]
    assert "L-BFGS" in (out / "README.md").read_text()
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] >= 0.9
    base, trained = load_file(tiny_resnet / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {k for k in base if base[k].shape != trained[k].shape or not torch.equal(base[k], trained[k])}
    assert changed == {"classifier.1.weight", "classifier.1.bias"}
    classifier = pipeline("image-classification", model=str(out))
    assert classifier(str(next((images / "test" / "red").iterdir())))[0]["label"] == "red"
