"""Helpers shared by the report, inference and publishing tests.

``trained_run`` trains the tiny ViT once per test session through the command line's
``main`` in this process (no subprocess, so the tests that use it stay in the quick loop,
tests/unit) and hands the same finished output folder to the tests of predict, of
`finetune eval` and of the Hub push (each of them still works alone).
``trained_run_in_subprocess`` trains the same recipe through the real command line in a
subprocess with a fake ``HF_TOKEN`` in its environment, so that the token-safety test can
search that run's log and outputs for it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.images import make_image_folder
from tests.helpers.models import make_tiny_vit

FAKE_TOKEN = "hf_FAKEtoken1234567890"
REPO_ID = "someone/tiny-vit-colours"


@dataclass
class TrainedRun:
    out: Path
    images: Path
    #: The subprocess's output, for runs trained through the real command line.
    result: subprocess.CompletedProcess | None = None


_RUNS: dict[str, TrainedRun] = {}


def _recipe(base: Path) -> tuple[Path, Path]:
    model = make_tiny_vit(base / "vit")
    images = make_image_folder(base / "images")
    recipe = write_recipe(
        base / "recipe.json", model, images, base / "out",
        training__logging_steps=2,
        hub={"push": False, "repo_id": REPO_ID, "private": True},
    )
    return recipe, images


def trained_run(tmp_path_factory) -> TrainedRun:
    """A finished run of the tiny ViT on generated colour images (trained once, in this process)."""
    from finetune.cli.main import main

    if "run" not in _RUNS:
        base = tmp_path_factory.mktemp("report-run")
        recipe, images = _recipe(base)
        assert main(["train", "--recipe", str(recipe)]) == 0
        _RUNS["run"] = TrainedRun(base / "out", images)
    return _RUNS["run"]


def trained_run_in_subprocess(tmp_path_factory) -> TrainedRun:
    """The same run, through the real command line in a subprocess, with HF_TOKEN set."""
    if "subprocess" not in _RUNS:
        base = tmp_path_factory.mktemp("report-run-cli")
        recipe, images = _recipe(base)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_TOKEN", FAKE_TOKEN)
            result = run_cli("--recipe", str(recipe), timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        _RUNS["subprocess"] = TrainedRun(base / "out", images, result)
    return _RUNS["subprocess"]


def run_cli_env(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    """Like tests.helpers.cli.run_cli, but with the environment given here winning (run_cli forces
    HF_HUB_OFFLINE=1, and a test of an unreachable endpoint needs it off)."""
    full = dict(os.environ, HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    full.update(env)
    command = [sys.executable, str(ROOT / "finetune" / "run.py"), *args]
    return subprocess.run(command, cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fake_eval(num_classes: int, num_images: int, wrong: float, seed: int = 0, size: int = 16):
    """Predictions with a given share of mistakes, and a matching decoded eval dataset
    (uint8 3×size×size pixels in numpy format, like data.decode's)."""
    from datasets import Array3D, Dataset, Features, Value

    from finetune.evaluation.metrics import Predictions

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_images)
    flip = rng.random(num_images) < wrong
    other = (labels + rng.integers(1, num_classes, num_images)) % num_classes
    preds = np.where(flip, other, labels)
    k = min(5, num_classes)
    topk = np.stack([(preds + i) % num_classes for i in range(k)], axis=1)
    confidence = rng.uniform(0.3, 1.0, num_images)
    true_prob = np.where(flip, rng.uniform(0, 0.3, num_images), confidence)
    pixels = rng.integers(0, 256, (num_images, 3, size, size), dtype=np.uint8)
    dataset = Dataset.from_dict(
        {"pixel_values": pixels, "labels": labels},
        features=Features({"pixel_values": Array3D((3, size, size), "uint8"), "labels": Value("int64")}),
    )
    dataset.set_format("numpy", columns=["pixel_values", "labels"])
    return Predictions(labels, preds, topk, confidence, true_prob), dataset


EXPECTED_FILES = [
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
    "train_results.json",
    "eval_results.json",
    "all_results.json",
    "recipe.json",
    "README.md",
    "eval_report.json",
    "data_report.json",
]


def folder_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()
    }


def saved_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")
