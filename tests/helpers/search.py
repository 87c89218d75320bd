"""Recipes with a search block, as dicts and as files."""

from __future__ import annotations

import json
from pathlib import Path

LR = {"log_uniform": [1e-3, 0.5]}


def search_recipe(model_path: Path | str, images: Path | str, out: Path, search: dict | None = None, **sections) -> dict:
    """A linear-probe recipe with a search block (the learning rate's, unless ``search`` is given); sections merge in."""
    raw = {
        "description": "search test",
        "model": {"name_or_path": str(model_path), "strategy": "linear_probe"},
        "data": {"dataset": str(images), "validation_fraction": 0.25, "augment": {"crop_scale": None, "hflip": False}},
        "training": {"num_train_epochs": 2, "per_device_train_batch_size": 8, "use_cpu": True, "seed": 0,
                     "disable_tqdm": True},
        "output_dir": str(out),
        "search": search if search is not None else {"training.learning_rate": LR},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def save_recipe(path: Path, raw: dict) -> Path:
    """The recipe written to ``path`` as JSON."""
    path.write_text(json.dumps(raw, indent=2))
    return path
