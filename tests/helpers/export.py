"""Finished-run folders for `finetune export` (without the training), and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.cli import write_recipe
from tests.helpers.images import CLASSES


def fake_run(base: Path, make, images: Path) -> Path:
    """A finetune output folder (recipe.json, config.json with the classes, weights,
    processor) without the training: export only reads these files."""
    out = base / "run"
    make(out, num_labels=len(CLASSES))
    config = json.loads((out / "config.json").read_text())
    names = sorted(CLASSES)  # the class order that the data package gives an image folder
    config["id2label"] = {str(i): name for i, name in enumerate(names)}
    config["label2id"] = {name: i for i, name in enumerate(names)}
    (out / "config.json").write_text(json.dumps(config))
    recipe = write_recipe(base / "recipe.json", out, images, out)
    (out / "recipe.json").write_text(recipe.read_text())
    return out


def one_line_error(capsys, *needles: str) -> str:
    """The one error line (progress bars of the libraries may come before it)."""
    captured = capsys.readouterr().err
    errors = [line for line in captured.splitlines() if "finetune: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("finetune: error:"), captured[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def odd_sized_images() -> list[Image.Image]:
    """Random images of five sizes, square and not, smaller and larger than the models' input."""
    rng = np.random.default_rng(3)
    sizes = [(24, 24), (37, 23), (23, 41), (64, 48), (97, 101)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
