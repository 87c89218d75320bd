"""Exact and near-duplicate images within each part, and eval images that duplicate training images (leakage).

Two images are exact duplicates when their decoded pixels are identical (the hash of
``finetune.data.signatures``), and near-duplicates when the cosine similarity of either of two views
reaches the threshold (``data.duplicate_threshold``, ``--threshold``):

- ``pixels``: the 16×16 thumbnails, which a copy keeps through JPEG re-encoding and a
  small resize;
- ``features``: the backbone's features, which a copy keeps through a mirror image, a
  small crop or a colour change, and which are the model's own view of the image.

The search is exact (``finetune.probe.neighbours``): every image against every other, in blocks.
Within a part each image keeps its :data:`NEIGHBOURS` most similar others per view, so a
group of more copies than that is still found, through its members' own neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from finetune.probe.neighbours import Leaks, find_leaks, nearest, normalise

#: Neighbours kept per image and view within a part.
NEIGHBOURS = 5


@dataclass(frozen=True)
class Pair:
    """Two images that are duplicates: image ``a`` of part ``part_a`` and ``b`` of ``part_b``."""

    part_a: int
    a: int
    part_b: int
    b: int
    similarity: float
    kind: str  # "exact" or "near"
    view: str  # "exact", "pixels" or "features": the view that matched


#: The views' names, in the order views_of gives them.
VIEWS = ("pixels", "features")


def views_of(part) -> list[torch.Tensor]:
    """The part's normalised views, in the order of :data:`VIEWS`: its thumbnails, its features."""
    return [part.thumbnails, normalise(part.features)]


@dataclass
class Within:
    """The duplicates inside one part, and every image's similarity to its nearest other image per view."""

    pairs: list[Pair]
    nearest: dict[str, np.ndarray]


def within(index: int, part, threshold: float, on_block: Callable[[int], None] | None = None) -> Within:
    """The duplicate pairs inside one part: exact ones (each copy paired with the first of
    its group), then near ones not already exact, each pair once with its highest
    similarity over the views; most similar first."""
    groups: dict[bytes, list[int]] = {}
    for i, digest in enumerate(part.hashes):
        groups.setdefault(digest, []).append(i)
    same_pixels = np.zeros(len(part.hashes), dtype=np.int64)
    pairs: list[Pair] = []
    for g, members in enumerate(groups.values()):
        same_pixels[members] = g
        pairs += [Pair(index, members[0], index, m, 1.0, "exact", "exact") for m in members[1:]]
    best: dict[tuple[int, int], tuple[float, str]] = {}
    closest = {}
    for view, vectors in zip(VIEWS, views_of(part)):
        sims, found = nearest(vectors, vectors, NEIGHBOURS, same=True, on_block=on_block)
        closest[view] = sims[:, 0].double().numpy() if sims.shape[1] else np.zeros(0)
        rows, cols = torch.nonzero(sims >= threshold, as_tuple=True)
        for i, c in zip(rows.tolist(), cols.tolist()):
            j = int(found[i, c])
            if same_pixels[i] == same_pixels[j]:
                continue
            key = (min(i, j), max(i, j))
            s = float(sims[i, c])
            if key not in best or s > best[key][0]:
                best[key] = (s, view)
    pairs += [Pair(index, i, index, j, s, "near", view) for (i, j), (s, view) in best.items()]
    return Within(sorted(pairs, key=lambda p: (-p.similarity, p.a, p.b)), closest)


def leaks(train_index: int, train, eval_index: int, evaluation, threshold: float, on_block: Callable[[int], None] | None = None) -> tuple[Leaks, list[Pair]]:
    """Eval images (of part ``evaluation``) that duplicate a training image: the verdict per
    eval image (``finetune.probe.neighbours.find_leaks``, by which ``data.leaked_eval`` drops),
    and a pair for each leaked one with its most similar training image, most similar first."""
    found = find_leaks(views_of(train), train.hashes, views_of(evaluation), evaluation.hashes, threshold, on_block)
    pairs = [
        Pair(train_index, int(found.nearest_train[i]), eval_index, int(i), float(found.similarity[i]),
             "exact" if found.exact[i] else "near", "exact" if found.exact[i] else VIEWS[int(found.view[i])])
        for i in found.rows
    ]
    return found, sorted(pairs, key=lambda p: (-p.similarity, p.b))
