"""Training runs end to end, through the real command line: every output and the card, the
pipeline, resuming or refusing a folder, the eval split, the best model, early stopping, messy image folders."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import CIFAR10, ROOT
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.images import CLASSES, make_image_folder
from tests.helpers.models import make_tiny_vit
from tests.helpers.runs import EXPECTED_FILES, folder_digest, saved_weights

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_vit) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("e2e")
    images = make_image_folder(root / "images", per_class=16)
    recipe = write_recipe(root / "recipe.json", tiny_vit, images, root / "out")
    umask = os.umask(0o022)  # the usual one, whatever the test runner's is
    try:
        result = run_cli("--recipe", str(recipe), launcher=ACCELERATE)
    finally:
        os.umask(umask)
    return root, recipe, result


@pytest.mark.e2e
def test_accelerate_launch_run_leaves_every_output(trained) -> None:
    root, _, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    out = root / "out"
    for name in EXPECTED_FILES:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(CLASSES)
    results = json.loads((out / "eval_results.json").read_text())
    for key in ("eval_accuracy", "eval_f1", "eval_precision", "eval_recall"):
        assert 0.0 <= results[key] <= 1.0
    assert results["eval_num_images"] == 3 * 8  # every test image, once
    assert results["eval_accuracy"] >= 0.6  # the colours are easy to tell apart
    resolved = json.loads((out / "recipe.json").read_text())
    assert resolved["data"]["validation_fraction"] == 0.1 and resolved["model"]["strategy"] == "full"
    assert "training: effective batch 8 = 8 per device × 1 process(es)" in result.stderr
    assert re.search(r"threads: \d+ CPU thread\(s\) \(", result.stderr)  # the benchmark parses it


@pytest.mark.e2e
@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
def test_every_written_file_follows_the_umask(trained) -> None:
    """Under umask 022 every file is 0644 and every folder 0755: the weights too, which
    safetensors writes as a private (0600) temporary file renamed into place."""
    root, _, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    out = root / "out"
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert "model.safetensors" in modes and any(name.startswith("checkpoint-") for name in modes)
    wrong = {
        name: oct(mode) for name, mode in modes.items() if mode != (0o755 if (out / name).is_dir() else 0o644)
    }
    assert not wrong


@pytest.mark.e2e
def test_pipeline_returns_class_names(trained) -> None:
    from PIL import Image
    from transformers import pipeline

    root, _, _ = trained
    classifier = pipeline("image-classification", model=str(root / "out"))
    image = Image.open(next((root / "images" / "test" / "green").iterdir()))
    labels = [row["label"] for row in classifier(image, top_k=3)]
    assert sorted(labels) == sorted(CLASSES)


@pytest.mark.e2e
def test_card_metadata_matches_eval_results(trained) -> None:
    from huggingface_hub import ModelCard

    root, _, _ = trained
    out = root / "out"
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-classification"
    results = json.loads((out / "eval_results.json").read_text())
    reported = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert reported["accuracy"] == pytest.approx(results["eval_accuracy"])
    assert reported["f1"] == pytest.approx(results["eval_f1"])
    assert data["model-index"][0]["results"][0]["dataset"]["split"] == "test"
    assert "| blue |" in card.text and "test recipe" in card.text


@pytest.mark.e2e
def test_same_recipe_resumes_and_other_recipe_is_refused(trained) -> None:
    root, recipe, _ = trained
    out = root / "out"
    before = folder_digest(out)
    other = run_cli("--recipe", str(recipe), "--set", "training.learning_rate=0.5")
    assert other.returncode == 2
    message = other.stderr.strip().splitlines()[-1]
    assert "holds a run of a different recipe" in message and "training.learning_rate: 0.01 → 0.5" in message
    assert folder_digest(out) == before  # nothing touched

    again = run_cli("--recipe", str(recipe))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr


@pytest.mark.e2e
def test_foreign_folder_is_untouched_unless_overwrite(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, out, training__num_train_epochs=1)
    refused = run_cli("--recipe", str(recipe))
    assert refused.returncode == 2 and "did not make (thesis.tex)" in refused.stderr
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


@pytest.mark.e2e
def test_eval_split_null_reports_validation_piece(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=10, splits=("",))
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, images, tmp_path / "out",
        data={"dataset": str(images), "eval_split": None, "validation_fraction": 0.3},
        training={"num_train_epochs": 1, "use_cpu": True, "per_device_train_batch_size": 8},
    )
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["eval_num_images"] == 9  # 30% of 30 images, stratified
    card = (tmp_path / "out" / "README.md").read_text()
    assert "validation piece" in card and "less independent than a test split" in card


@pytest.mark.e2e
def test_missing_eval_split_fails_before_training(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=4, splits=("",))
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, tmp_path / "out")
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 2
    assert "data.eval_split: 'test' is not a split" in result.stderr and "set data.eval_split to null" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.e2e
@pytest.mark.skipif(not CIFAR10.is_dir(), reason="../shared/datasets/cifar10 is not present")
def test_tiny_vit_on_real_cifar10(tmp_path: Path) -> None:
    """A tiny ViT on 2,000 real CIFAR-10 images, set from the command line: every output, the real class names."""
    from transformers import pipeline

    vit = make_tiny_vit(tmp_path / "vit", image_size=32, num_labels=3)
    out = tmp_path / "out"
    result = run_cli(
        "--recipe", str(ROOT / "recipes" / "cifar10_vit.json"),
        "--set", f"model.name_or_path={vit}",
        "--set", f"data.dataset={CIFAR10}",
        "--set", "data.max_train_samples=2000",
        "--set", "data.max_eval_samples=500",
        "--set", "training.num_train_epochs=1",
        "--set", "training.per_device_train_batch_size=64",
        "--set", "training.use_cpu=true",
        "--set", "training.disable_tqdm=true",
        "--set", f"output_dir={out}",
        launcher=ACCELERATE,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in EXPECTED_FILES:
        assert (out / name).is_file(), name
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_num_images"] == 500
    classifier = pipeline("image-classification", model=str(out))
    from datasets import load_dataset

    image = load_dataset(str(CIFAR10), split="test[:1]")[0]["img"]
    names = {row["label"] for row in classifier(image, top_k=10)}
    assert names == {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


# ------------------------------------------------------------------ interrupted runs


@pytest.mark.e2e
def test_load_best_model_at_end_really_loads_the_best_weights(tmp_path: Path, tiny_vit: Path) -> None:
    """transformers 5 reloads the best checkpoint with load_state_dict(strict=False) on
    legacy key names and silently keeps the last weights; FinetuneTrainer must not."""
    images = make_image_folder(tmp_path / "images", per_class=12)
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, images, tmp_path / "out",
        training={"num_train_epochs": 3, "learning_rate": 0.05, "per_device_train_batch_size": 4, "seed": 0,
                  "use_cpu": True, "disable_tqdm": True, "save_total_limit": 3,
                  "load_best_model_at_end": True, "metric_for_best_model": "loss"},
    )
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"])
    final, chosen = saved_weights(tmp_path / "out"), saved_weights(tmp_path / "out" / best.name)
    assert all(torch.equal(final[k], chosen[k]) for k in final)


@pytest.mark.e2e
def test_early_stopping_stops_when_validation_stops_improving(tmp_path: Path, tiny_vit: Path) -> None:
    """No change can beat a threshold of 1e9: with patience 1, the second evaluation without
    enough improvement ends training after epoch 2 of 5."""
    images = make_image_folder(tmp_path / "images", per_class=8)
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, images, tmp_path / "out",
        training={"num_train_epochs": 5, "per_device_train_batch_size": 8, "seed": 0, "use_cpu": True,
                  "disable_tqdm": True, "early_stopping_patience": 1, "early_stopping_threshold": 1e9},
    )
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["epoch"] == 2.0 and state["global_step"] < state["max_steps"]
    assert "training: stopped early at step" in result.stderr
    assert state["best_model_checkpoint"] is not None  # load_best_model_at_end came on by default


# ---------------------------------------------------------------------- messy folders


def _messy_folder(root: Path) -> dict[str, str]:
    """Good images of every odd kind, plus bad files and junk; returns {bad file: kind}."""
    import io

    import numpy as np
    from PIL import Image

    from tests.helpers.images import odd_images, png_claiming

    make_image_folder(root, per_class=10)
    odd = odd_images()
    for i, (name, raw) in enumerate(sorted(odd.items())):
        folder = root / "train" / CLASSES[i % 3]
        (folder / f"odd_{name}.{'JPG' if name in ('exif', 'cmyk') else 'png'}").write_bytes(raw)
    bad = {
        "train/red/empty.png": b"",
        "train/green/notes.jpg": b"this is not an image",
        "train/blue/bomb.png": png_claiming(20000, 20000),
    }
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="JPEG")
    bad["train/red/truncated.jpg"] = buf.getvalue()[:200]
    for rel, raw in bad.items():
        (root / rel).write_bytes(raw)
    (root / "train" / "red" / ".DS_Store").write_bytes(b"\0junk")
    (root / "train" / "Thumbs.db").write_bytes(b"junk")
    (root / "__MACOSX" / "train" / "red").mkdir(parents=True)
    (root / "__MACOSX" / "train" / "red" / "._red_0.png").write_bytes(b"\0\5\26\7 AppleDouble")
    unicode_class = root / "train" / "Ünïcödé 猫"
    unicode_class.mkdir()
    for i in range(4):
        (unicode_class / f"cat_{i}.JPG").write_bytes(odd["exif"])
    return bad


@pytest.mark.e2e
def test_messy_folder_trains_and_reports_every_bad_file(tmp_path: Path, tiny_vit: Path) -> None:
    images = tmp_path / "messy"
    bad = _messy_folder(images)
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, images, tmp_path / "out",
        data={"dataset": str(images), "max_bad_fraction": 0.1, "validation_fraction": 0.1},
        training={"num_train_epochs": 1, "use_cpu": True, "per_device_train_batch_size": 8, "disable_tqdm": True},
    )
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    reported = {Path(b["path"]).relative_to(images).as_posix(): b["reason"] for b in report["bad_files"]}
    assert set(reported) == set(bad), reported
    assert "DecompressionBomb" in reported["train/blue/bomb.png"]
    assert report["junk_files_ignored"] == 3
    assert "4 unreadable file(s) set aside" in result.stderr and "3 junk file(s) ignored" in result.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert set(config["id2label"].values()) == set(CLASSES) | {"Ünïcödé 猫"}  # never "train"/"test"


@pytest.mark.e2e
def test_too_many_bad_files_stop_before_training(tmp_path: Path, tiny_vit: Path) -> None:
    images = tmp_path / "messy"
    _messy_folder(images)
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, tmp_path / "out")  # default 1% threshold
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert "cannot be read" in message and "data.max_bad_fraction 0.01" in message
    assert (tmp_path / "out" / "data_report.json").is_file()
    assert not (tmp_path / "out" / "model.safetensors").exists() and not list((tmp_path / "out").glob("checkpoint-*"))
