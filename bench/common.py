"""What the benchmark scripts share: the scenarios, their recipes and training settings, the
same splits and processor for both sides, and the warm-up done outside every timing.

``pipeline.py``, ``reference.py``, ``commands.py``, ``search.py`` and ``small_recipe.py``
import it; it imports none of them, so no bench script imports a module that imports it
back (tests/repo checks the bench scripts' imports for circles).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CIFAR10 = ROOT.parent / "shared" / "datasets" / "cifar10"
RESULT_TAG = "BENCH_RESULT "
LITE0 = "builtin:efficientnet-lite0"
TINY_VIT = "tiny-vit-224-p32-w16"  # made by make_tiny_vit() in the work folder


@dataclass
class Scenario:
    """One measurement; the same object configures both sides."""

    key: str
    title: str
    kind: str  # "train" or "data"
    model: str
    image_size: int
    n_train: int
    n_eval: int = 0
    strategy: str = "full"
    epochs: float = 1
    batch_size: int = 64
    validation_fraction: float = 0.0
    crop_scale: list[float] | None = None
    hflip: bool = False
    seed: int = 42
    training: dict[str, Any] = field(default_factory=dict)
    probe_solver: str = "trainer"
    #: Compare with the reference run of this scenario instead of running one of its own.
    reference_of: str | None = None


def scenarios(quick: bool) -> list[Scenario]:
    """The scenarios; --quick keeps their shape at a fraction of the size."""
    probe = Scenario(
        key="a",
        title="(a) linear probe, EfficientNet-Lite0, 96 px",
        kind="train",
        model=LITE0,
        image_size=96,
        n_train=2000,
        n_eval=1000,
        strategy="linear_probe",
        epochs=10,
        validation_fraction=0.1,
        training={
            "learning_rate": 0.001,
            "optim": "sgd",
            "optim_args": "momentum=0.9",
            "weight_decay": 0.0,
            "lr_scheduler_type": "constant",
        },
    )
    full = Scenario(
        key="b",
        title="(b) full fine-tune, tiny ViT, 224 px, crop+flip",
        kind="train",
        model=TINY_VIT,
        image_size=224,
        n_train=2000,
        n_eval=500,
        epochs=2,
        crop_scale=[0.08, 1.0],
        hflip=True,
        training={"learning_rate": 1e-3, "optim": "adamw_torch", "weight_decay": 0.0, "lr_scheduler_type": "linear"},
    )
    # Not a target: the optional L-BFGS head on the same cached features, against the same
    # reference run (its SGD loop, 10 epochs), to show what the closed-form protocol gives.
    lbfgs = replace(probe, key="a+lbfgs", title="(a+lbfgs) the same probe, L-BFGS head", probe_solver="lbfgs", reference_of="a")
    data_probe = replace(probe, key="a-data", title="(a) data only, 96 px", kind="data", n_eval=0)
    data_plain = Scenario(key="c", title="(c) data only, 224 px", kind="data", model=TINY_VIT, image_size=224, n_train=2000)
    data_aug = replace(data_plain, key="c+aug", title="(c+aug) data only, 224 px, crop+flip", crop_scale=[0.08, 1.0], hflip=True)
    chosen = [probe, lbfgs, data_probe, full, data_plain, data_aug]
    if quick:
        chosen = [
            replace(s, n_train=256, n_eval=min(s.n_eval, 128), epochs=min(s.epochs, 2 if s.key == "a" else 1))
            for s in chosen
        ]
    return chosen


# ----------------------------------------------------------------------- shared setup


def make_tiny_vit(path: Path, image_size: int = 224, num_labels: int = 10) -> Path:
    """A random-init ViT small enough that the input pipeline dominates (see scenario b)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    if (path / "model.safetensors").is_file():
        return path
    config = ViTConfig(
        image_size=image_size,
        patch_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def model_path(s: Scenario, work: Path) -> str:
    return str(work / TINY_VIT) if s.model == TINY_VIT else s.model


def recipe_dict(s: Scenario, work: Path, out: Path) -> dict[str, Any]:
    """Our recipe for a scenario; the reference reads the same numbers from the Scenario."""
    return {
        "description": f"bench: {s.title}",
        "model": {"name_or_path": model_path(s, work), "strategy": s.strategy, "probe_solver": s.probe_solver},
        "data": {
            "dataset": str(CIFAR10),
            "train_split": "train",
            "eval_split": "test",
            "validation_fraction": s.validation_fraction,
            "max_train_samples": s.n_train,
            "max_eval_samples": max(s.n_eval, 10),
            "image_size": s.image_size,
            "augment": {"crop_scale": s.crop_scale, "hflip": s.hflip},
        },
        "training": training_dict(s),
        "metrics": ["accuracy"],
        "output_dir": str(out),
    }


def training_dict(s: Scenario) -> dict[str, Any]:
    """The TrainingArguments both sides use (the reference adds only what its design needs)."""
    return {
        "num_train_epochs": s.epochs,
        "per_device_train_batch_size": s.batch_size,
        "per_device_eval_batch_size": s.batch_size,
        "seed": s.seed,
        "eval_strategy": "epoch" if s.validation_fraction > 0 else "no",
        "save_strategy": "epoch",
        "save_total_limit": 2,
        "logging_steps": 10,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **s.training,
    }


def same_splits(s: Scenario):
    """The raw CIFAR-10 splits, subset exactly as our recipe subsets them."""
    from finetune import data
    from finetune.recipe import recipe_from_dict

    recipe = recipe_from_dict(recipe_dict(s, Path("/nonexistent"), Path("/nonexistent/out")))
    raw = data.load_raw(recipe.data)
    return data.make_splits(raw, recipe.data, s.seed)


def processor_for(s: Scenario, work: Path):
    from finetune.models import classifier as model_lib
    from finetune.recipe import ModelConfig

    return model_lib.load_processor(ModelConfig(name_or_path=model_path(s, work)), s.image_size)


def warm_up(work: Path, todo: list[Scenario]) -> None:
    """Outside every timing: the parquet→arrow conversion, the built-in model's one-off
    conversion, the tiny ViT checkpoint."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf-datasets")
    from datasets import load_dataset

    from finetune.models import builtin

    load_dataset(str(CIFAR10))
    if any(s.model == LITE0 for s in todo):
        builtin.resolve_model(LITE0)
    if any(s.model == TINY_VIT for s in todo):
        make_tiny_vit(work / TINY_VIT)
