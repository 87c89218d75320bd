"""Shared fixtures: tiny random models built from a config, and generated image data.

Everything here is made on the spot, offline, in a few seconds on CPU: a 2-layer, 32-wide
ViT, a 2-stage ResNet and a tiny timm model (through TimmWrapper), each saved with its
image processor like a Hub checkpoint; and image folders whose classes differ by colour and
shape so a model can learn them in a handful of steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _pin_xdist_worker() -> None:
    """Under pytest-xdist (``-n N``), give each worker its own share of this process's CPUs.

    Every training process sizes its torch threads by the cores it may use (threads.py), and
    the subprocesses a test starts inherit the worker's CPU affinity. Unpinned, two workers
    on 2 cores each ran 2-thread jobs: 4 spinning OpenMP threads on 2 cores, and the notebook
    test, which takes 3 minutes alone, had not finished after 15. Pinned, each worker and
    everything it starts sees its own cores, and the tests about threads read the affinity."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cpus, index, workers = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")), int(count)
    mine = cpus[index::workers] if len(cpus) >= workers else [cpus[index % len(cpus)]]
    os.sched_setaffinity(0, mine)


_pin_xdist_worker()

ROOT = Path(__file__).resolve().parent.parent
CIFAR10 = ROOT.parent / "shared" / "datasets" / "cifar10"
CLASSES = ["red", "green", "blue"]


def make_tiny_vit(path: Path, image_size: int = 32, num_labels: int = 3) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=image_size,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    import torch

    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def make_tiny_resnet(path: Path, num_labels: int = 5) -> Path:
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=num_labels
    )
    torch.manual_seed(0)
    ResNetForImageClassification(config).save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(path)
    return path


def make_tiny_timm(path: Path, num_labels: int = 7) -> Path:
    import timm
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    reference = timm.create_model("test_efficientnet", pretrained=False)
    pretrained_cfg = {k: v for k, v in reference.pretrained_cfg.items() if k not in ("url", "hf_hub_id", "tag")}
    pretrained_cfg["input_size"] = (3, 32, 32)
    config = TimmWrapperConfig(
        architecture="test_efficientnet",
        pretrained_cfg=pretrained_cfg,
        num_labels=num_labels,
        num_features=reference.num_features,
    )
    torch.manual_seed(0)
    TimmWrapperForImageClassification(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    return make_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory) -> Path:
    return make_tiny_resnet(tmp_path_factory.mktemp("tiny-resnet"))


@pytest.fixture(scope="session")
def tiny_timm(tmp_path_factory) -> Path:
    return make_tiny_timm(tmp_path_factory.mktemp("tiny-timm"))


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MB file system (tmpfs) to fill up, where mounting one is allowed (root in a
    container); the test is skipped elsewhere."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def leave_free(disk: Path, free: int) -> None:
    """Make ``disk`` have ``free`` bytes free by resizing a filler file on it."""
    import shutil

    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    filler.write_bytes(b"\0" * max(0, shutil.disk_usage(disk).free - free))


def class_image(name: str, rng: np.random.Generator, size: int = 24) -> Image.Image:
    """A noisy image whose dominant colour says its class."""
    channel = CLASSES.index(name) % 3
    arr = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    arr[..., channel] = rng.integers(170, 256, size=(size, size), dtype=np.uint8)
    return Image.fromarray(arr)


def make_image_folder(root: Path, per_class: int = 12, splits: tuple[str, ...] = ("train", "test"), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split in splits:
        for name in CLASSES:
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            count = per_class if split != "test" else max(per_class // 2, 2)
            for i in range(count):
                class_image(name, rng).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


def write_recipe(path: Path, model_path: Path | str, dataset: Path | str, output_dir: Path, **extra) -> Path:
    recipe = {
        "description": "test recipe",
        "expected": {"metric": "accuracy", "value": 0.9},
        "model": {"name_or_path": str(model_path), "strategy": "full"},
        "data": {"dataset": str(dataset), "augment": {"crop_scale": [0.8, 1.0], "hflip": True}},
        "training": {
            "num_train_epochs": 2,
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 8,
            "seed": 0,
            "use_cpu": True,
            "disable_tqdm": True,
        },
        "output_dir": str(output_dir),
    }
    for key, value in extra.items():
        section, _, field = key.partition("__")
        if field:
            recipe.setdefault(section, {})[field] = value
        else:
            recipe[section] = value
    path.write_text(json.dumps(recipe, indent=2))
    return path


def run_cli(*args: str, cwd: Path | None = None, launcher: list[str] | None = None, timeout: int = 600):
    """Run the real command line in a subprocess (offline)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    command = (launcher or [sys.executable]) + [str(ROOT / "finetune" / "run.py"), *args]
    return subprocess.run(command, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def doubled_head():
    """A classifier whose logits are 2 × its last Linear layer's output: cached features (the
    Linear's input) cannot reproduce them, so a cached-feature probe must refuse it."""
    from types import SimpleNamespace

    import torch

    class DoubledHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = torch.nn.Linear(3, 2)

        def forward(self, pixel_values):
            return SimpleNamespace(logits=2 * self.classifier(pixel_values.mean((2, 3))))

    return DoubledHead()
