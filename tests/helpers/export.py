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


#: The thresholds :func:`multi_label_run` saves ("red" keeps the default).
MULTI_LABEL_THRESHOLDS = {"blue": 0.3, "green": 0.62}


def multi_label_run(base: Path, images: Path) -> tuple[Path, list[str]]:
    """A finished multi-label run (:func:`fake_run` with the tiny ResNet; problem_type and
    :data:`MULTI_LABEL_THRESHOLDS` in its config, a head that makes several classes likely on
    some images and none on others) and its class names."""
    import torch
    from transformers import AutoModelForImageClassification

    from finetune.data import multi_label
    from tests.helpers.models import make_tiny_resnet

    run = fake_run(base, make_tiny_resnet, images)
    model = AutoModelForImageClassification.from_pretrained(run)
    with torch.no_grad():
        torch.manual_seed(0)
        model.classifier[-1].weight.normal_(0, 2.0)
        model.classifier[-1].bias.copy_(torch.tensor([0.0, -1.0, -3.5]))
    model.config.problem_type = multi_label.PROBLEM_TYPE
    multi_label.set_thresholds(model.config, list(MULTI_LABEL_THRESHOLDS), list(MULTI_LABEL_THRESHOLDS.values()))
    model.save_pretrained(run)
    return run, [model.config.id2label[i] for i in range(model.config.num_labels)]


def torch_sigmoids(run: Path, files: list[Path], flip: bool = False) -> np.ndarray:
    """The saved model's sigmoid probabilities for image files (N × classes), as its processor
    prepares them; ``flip``: averaged with those of the mirror image."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(run).eval()
    processor = AutoImageProcessor.from_pretrained(run)
    rows = []
    for path in files:
        with Image.open(path) as im:
            pixels = processor(images=[im.convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            p = model(pixel_values=pixels).logits.sigmoid()
            if flip:
                p = (p + model(pixel_values=pixels.flip(-1)).logits.sigmoid()) / 2
        rows.append(p[0].numpy())
    return np.stack(rows)


def labels_at_thresholds(probs: np.ndarray, names: list[str], minimum: float | None = None) -> list[list[str]]:
    """Every class at or above its threshold (or ``minimum``), most probable first, per row."""
    from finetune.data.multi_label import DEFAULT_THRESHOLD

    limits = [minimum if minimum is not None else MULTI_LABEL_THRESHOLDS.get(n, DEFAULT_THRESHOLD) for n in names]
    return [[names[i] for i in np.argsort(-row, kind="stable") if row[i] >= limits[i]] for row in probs]
