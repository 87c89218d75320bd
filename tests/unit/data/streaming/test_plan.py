"""finetune.data.streaming.plan: every image exactly once per epoch across processes, the same number of batches on each, lanes that cover a process's batches, and the interleave's arithmetic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from finetune.data.streaming import plan


@pytest.mark.parametrize("n, world, batch", itertools.product([1, 7, 8, 9, 63, 64, 65, 130], [1, 2, 3, 8], [1, 4, 64]))
def test_every_position_once_and_equal_batch_counts(n: int, world: int, batch: int) -> None:
    if n < world:
        assert plan.batch_sizes(n, world, 0, batch) == []
        return
    ranges = [plan.rank_range(n, world, r) for r in range(world)]
    covered = [p for start, stop in ranges for p in range(start, stop)]
    assert covered == list(range(n))
    sizes = [plan.batch_sizes(n, world, r, batch) for r in range(world)]
    assert len({len(s) for s in sizes}) == 1, "every process makes the same number of batches"
    for (start, stop), mine in zip(ranges, sizes):
        assert sum(mine) == stop - start
        assert all(size == batch for size in mine[:-1]) and 1 <= mine[-1] <= batch + 1


def test_drop_last_keeps_full_batches_only() -> None:
    assert plan.batch_sizes(130, 2, 0, 64, drop_last=True) == [64]
    assert plan.batch_sizes(131, 2, 1, 64, drop_last=True) == [64]
    # Without it, the one image a process has more than the others joins its last batch.
    assert plan.batch_sizes(129, 2, 0, 64) == [64] and plan.batch_sizes(129, 2, 1, 64) == [65]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_lanes_cover_the_batches_contiguously(count: int) -> None:
    sizes = [4] * 9 + [6]
    lanes = plan.lanes(sizes, count)
    assert sorted(b for lane in lanes for b in lane.batches) == list(range(10))
    assert lanes[0].start == 0 and lanes[-1].stop == sum(sizes)
    assert all(a.stop == b.start for a, b in zip(lanes, lanes[1:]))
    for lane in lanes:
        assert lane.batches == list(range(lanes.index(lane), 10, count))
        assert lane.offset(len(lane.sizes)) == lane.stop


def test_pieces_follow_the_shard_order() -> None:
    order = np.array([2, 0, 1])
    sizes = [5, 3, 4]  # read as shard 2 (4 rows), shard 0 (5), shard 1 (3)
    assert plan.pieces(order, sizes, 0, 12) == [plan.Piece(2, 0, 4), plan.Piece(0, 0, 5), plan.Piece(1, 0, 3)]
    assert plan.pieces(order, sizes, 3, 7) == [plan.Piece(2, 3, 4), plan.Piece(0, 0, 3)]


@pytest.mark.parametrize("lengths", [[5], [3, 3], [1, 4, 2], [0, 2, 7]])
def test_interleaved_counts_match_a_round_robin(lengths: list[int]) -> None:
    order = []
    left = list(lengths)
    while any(left):
        for k in range(len(left)):
            if left[k]:
                order.append(k)
                left[k] -= 1
    for taken in range(len(order) + 1):
        expected = np.bincount(np.asarray(order[:taken], dtype=np.int64), minlength=len(lengths))
        assert plan.interleaved_counts(lengths, taken).tolist() == expected.tolist()
        assert plan.sequential_counts(lengths, taken).sum() == taken


def test_orders_depend_on_seed_and_epoch_only() -> None:
    a = plan.seed_sequence(0, 1).permutation(100)
    assert (a == plan.seed_sequence(0, 1).permutation(100)).all()
    assert not (a == plan.seed_sequence(0, 2).permutation(100)).all()
    assert not (a == plan.seed_sequence(1, 1).permutation(100)).all()
