"""Duplicate pairs inside a part and across parts, on hand-made hashes and views; class centres and the outlier fence."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from finetune.inspection import duplicates, outliers
from finetune.probe.neighbours import normalise


class Part(SimpleNamespace):
    """What the duplicate search reads of a part."""

    def __len__(self) -> int:
        return len(self.hashes)


def make(hashes, pixels, features, labels=None) -> Part:
    return Part(hashes=hashes, thumbnails=normalise(torch.tensor(pixels)), features=torch.tensor(features),
                labels=np.asarray(labels if labels is not None else [0] * len(hashes)))


def test_pairs_inside_a_part_exact_then_near_each_once() -> None:
    p = make(
        [b"a", b"a", b"a", b"b", b"c", b"d"],
        [[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0.99, 0.05], [0, 0, 1]],
        [[1, 0], [1, 0], [1, 0], [0, 1], [1, 1], [-1, 0.2]],
    )
    found = duplicates.within(0, p, threshold=0.95)
    exact = [(x.a, x.b) for x in found.pairs if x.kind == "exact"]
    near = [(x.a, x.b, x.view) for x in found.pairs if x.kind == "near"]
    assert exact == [(0, 1), (0, 2)]  # each copy with the first of its group, not every pair
    assert near == [(3, 4, "pixels")]  # once, by the view that matched; copies of "a" not repeated
    assert set(found.nearest) == {"pixels", "features"} and len(found.nearest["pixels"]) == 6
    assert found.nearest["features"][5] < 0.95


def test_a_group_larger_than_the_neighbours_kept_is_still_connected() -> None:
    n = duplicates.NEIGHBOURS + 4
    base = [[1.0, 0.001 * i] for i in range(n)]
    p = make([bytes([i]) for i in range(n)], base, base)
    pairs = duplicates.within(0, p, threshold=0.99).pairs
    members = {x.a for x in pairs} | {x.b for x in pairs}
    assert members == set(range(n))


def test_leaked_pairs_name_the_training_image_and_the_view() -> None:
    train = make([b"a", b"b"], [[1, 0, 0], [0, 1, 0]], [[1, 0], [0, 1]])
    evaluation = make([b"b", b"x", b"y"], [[0, 1, 0], [0.98, 0.1, 0], [0, 0, 1]], [[0, 1], [-1, 0], [-1, -1]])
    verdict, pairs = duplicates.leaks(0, train, 1, evaluation, threshold=0.95)
    assert verdict.leaked.tolist() == [True, True, False]
    assert [(x.a, x.b, x.kind, x.view) for x in pairs] == [(1, 0, "exact", "exact"), (0, 1, "near", "pixels")]
    assert all(x.part_a == 0 and x.part_b == 1 for x in pairs)


def test_outliers_are_far_from_every_class_centre() -> None:
    rng = np.random.default_rng(0)
    centres = np.abs(rng.normal(0, 1, (4, 16))) * 3
    labels = np.repeat(np.arange(4), 50)
    feats = centres[labels] + rng.normal(0, 0.3, (200, 16))
    feats[7] = -centres.mean(0)  # like no class
    c = outliers.class_centres(torch.tensor(feats).float(), labels, 4)
    assert torch.allclose(c.norm(dim=1), torch.ones(4), atol=1e-5)
    found = outliers.against(torch.tensor(feats).float(), labels, c)
    fence = outliers.fence(found.similarity)
    assert np.flatnonzero(found.similarity < fence).tolist() == [7]
    assert found.own[0] == pytest.approx(found.similarity[0])
    # A class without training images has a zero centre, similar to nothing.
    assert outliers.class_centres(torch.ones(2, 3), np.array([0, 0]), 2)[1].abs().sum() == 0
