"""The blocked nearest-neighbour search against a brute-force one, memory bounded; and the leak verdict from hashes and views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune.probe import neighbours
from finetune.probe.neighbours import find_leaks, nearest, normalise


def test_nearest_in_blocks_equals_the_full_similarity_matrix(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k = normalise(torch.randn(57, 8, generator=gen)), normalise(torch.randn(40, 8, generator=gen))
    # 40 keys × 4 bytes × 3 rows: blocks of 3 queries, the last one shorter.
    monkeypatch.setattr(neighbours, "BLOCK_BYTES", 40 * 4 * 3)
    blocks: list[int] = []
    sims, index = nearest(q, k, 4, on_block=blocks.append)
    full = q @ k.t()
    expected, expected_index = full.topk(4, dim=1)
    assert torch.allclose(sims, expected) and torch.equal(index, expected_index)
    assert max(blocks) == 3 and sum(blocks) == 57  # never more than a block's rows at once


def test_a_row_is_not_its_own_neighbour() -> None:
    x = normalise(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    sims, index = nearest(x, x, 5, same=True)
    assert sims.shape == (3, 2)  # k is cut to the other rows
    assert index[:, 0].tolist() == [1, 0, 1]
    assert (index != torch.arange(3)[:, None]).all()


def test_normalise_keeps_a_zero_row_zero() -> None:
    z = normalise(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.allclose(z, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_leaks_come_from_equal_pixels_or_a_view_above_the_threshold() -> None:
    train_px = normalise(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    train_ft = normalise(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    eval_px = normalise(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.05, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]))
    eval_ft = normalise(torch.tensor([[-1.0, 0.0], [0.0, -1.0], [0.0, 1.0], [-1.0, -1.0]]))
    train_hashes = [b"a", b"b", b"c"]
    eval_hashes = [b"c", b"x", b"y", b"z"]  # eval 0 has train 2's pixels
    leaks = find_leaks([train_px, train_ft], train_hashes, [eval_px, eval_ft], eval_hashes, threshold=0.95)
    assert leaks.exact.tolist() == [True, False, False, False]
    assert leaks.nearest_train[0] == 2 and leaks.similarity[0] == 1.0
    # Eval 1: near train 0 by its pixels; eval 2: near train 1 by its features; eval 3: neither.
    assert leaks.leaked.tolist() == [True, True, True, False]
    assert leaks.nearest_train[1] == 0 and leaks.view[1] == 0
    assert leaks.nearest_train[2] == 1 and leaks.view[2] == 1 and leaks.similarity[2] == pytest.approx(1.0)
    assert leaks.rows.tolist() == [0, 1, 2]
    assert leaks.similarity[3] < 0.95
    # Per view: every eval image's best similarity in that view.
    assert len(leaks.per_view) == 2 and leaks.per_view[1][2] == pytest.approx(1.0)
    stricter = find_leaks([train_px, train_ft], train_hashes, [eval_px, eval_ft], eval_hashes, threshold=0.99999)
    assert stricter.leaked.tolist() == [True, False, True, False]


def test_no_training_images_means_no_leaks() -> None:
    empty = torch.zeros(0, 3)
    leaks = find_leaks([empty], [], [normalise(torch.ones(2, 3))], [b"a", b"b"], 0.9)
    assert not leaks.leaked.any() and (leaks.nearest_train == -1).all()
    assert np.isneginf(leaks.similarity).all()
