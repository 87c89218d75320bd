"""A tiny generated multi-label data set: 2×2 mosaics of solid colour tiles, labelled with the colours they show, written as CSV, JSON-lines or parquet."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: The classes, each a tile colour (RGB); an image with no class is all grey.
COLOURS = {"blue": (30, 60, 220), "green": (30, 190, 40), "red": (220, 30, 30), "yellow": (235, 215, 30)}
GREY = (128, 128, 128)
KINDS = ("csv", "jsonl", "parquet")


@dataclass
class MultiLabelSet:
    """What :func:`write_multi_label_set` wrote."""

    root: Path
    #: What ``data.dataset`` names: ``root/data``, whose files make the splits ``train`` and ``test``.
    dataset: str
    kind: str
    classes: list[str]  # sorted, as the run's class names
    #: Each split's images (absolute paths) and their classes, in file order.
    images: dict[str, list[str]]
    labels: dict[str, list[list[str]]]


def mosaic(classes: list[str], rng: np.random.Generator, size: int = 16) -> Image.Image:
    """A ``size``×``size`` image of 2×2 tiles: each of ``classes``' colours on at least one tile
    (the other tiles repeat them), slightly noisy; all grey for no class."""
    colours = [COLOURS[c] for c in classes] or [GREY]
    tiles = colours + [colours[int(i)] for i in rng.integers(0, len(colours), 4 - len(colours))]
    tiles = [tiles[int(i)] for i in rng.permutation(4)]
    half = size // 2
    arr = np.zeros((size, size, 3), dtype=np.int16)
    for k, colour in enumerate(tiles):
        r, c = divmod(k, 2)
        arr[r * half : (r + 1) * half, c * half : (c + 1) * half] = colour
    arr += rng.integers(-12, 13, size=arr.shape, dtype=np.int16)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def draw_labels(n: int, rng: np.random.Generator, classes: list[str], empty_every: int = 8) -> list[list[str]]:
    """``n`` label sets: the first ones one class each (every class has an image), then 1 to 3
    classes drawn at random, every ``empty_every``-th image with none (0: never)."""
    out = []
    for i in range(n):
        if i < len(classes):
            out.append([classes[i]])
        elif empty_every and i % empty_every == empty_every - 1:
            out.append([])
        else:
            k = int(rng.integers(1, min(3, len(classes)) + 1))
            out.append(sorted(str(c) for c in rng.choice(classes, size=k, replace=False)))
    return out


def write_multi_label_set(
    root: Path,
    kind: str = "csv",
    n_train: int = 32,
    n_test: int = 16,
    seed: int = 0,
    size: int = 16,
    separator: str = ";",
    classes: list[str] | None = None,
    empty_every: int = 8,
) -> MultiLabelSet:
    """Write a multi-label set under ``root`` (made if missing) in well under a second:
    ``root/images/{train,test}_N.png`` (:func:`mosaic` images of ``size`` px) and the splits'
    files in ``root/data/``, which ``data.dataset: str(root / "data")`` (``.dataset``) reads
    with splits ``train`` and ``test`` (the images sit outside that folder: beside data
    files, ``datasets`` would take the folder for an image folder):

    - ``kind="csv"``: ``train.csv`` / ``test.csv`` with columns ``image,labels``, the labels
      joined by ``separator`` (``"blue;red"``; an empty cell for no class);
    - ``kind="jsonl"``: ``train.jsonl`` / ``test.jsonl``, ``{"image": ..., "labels": [...]}``;
    - ``kind="parquet"``: ``train.parquet`` / ``test.parquet`` written by ``datasets``, an
      embedded ``Image`` column and a ``labels`` column of ``Sequence(ClassLabel(classes))``.

    Image paths are absolute. ``classes``: a subset of :data:`COLOURS` (default: all four);
    every class has ``n_train`` images enough to appear in train (the first images have one
    class each); every ``empty_every``-th image has no class. Seeded: the same arguments
    write the same files.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    names = sorted(classes or COLOURS)
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    folder = root / "data"
    folder.mkdir(exist_ok=True)
    images: dict[str, list[str]] = {}
    labels: dict[str, list[list[str]]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels[split] = draw_labels(n, rng, names, empty_every)
        images[split] = []
        for i, label_set in enumerate(labels[split]):
            path = root / "images" / f"{split}_{i}.png"
            mosaic(label_set, rng, size).save(path)
            images[split].append(str(path.resolve()))
        if kind == "csv":
            lines = ["image,labels"] + [f"{p},{separator.join(ls)}" for p, ls in zip(images[split], labels[split])]
            (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
        elif kind == "jsonl":
            rows = [json.dumps({"image": p, "labels": ls}) for p, ls in zip(images[split], labels[split])]
            (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
        else:
            from datasets import ClassLabel, Dataset, Features, List
            from datasets import Image as ImageFeature

            features = Features({"image": ImageFeature(), "labels": List(ClassLabel(names=names))})
            encoded = [[names.index(c) for c in ls] for ls in labels[split]]
            Dataset.from_dict({"image": images[split], "labels": encoded}, features=features).to_parquet(
                str(folder / f"{split}.parquet")
            )
    return MultiLabelSet(root, str(folder), kind, names, images, labels)
