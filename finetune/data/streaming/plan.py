"""Which images each process and each loader worker reads in an epoch, and in which batches: pure arithmetic on sizes, the seed and the epoch.

An epoch is one order of the split (a seeded permutation of its images, or of its shards),
cut into one contiguous range per process, the ranges' sizes differing by at most one
image, so every image is read exactly once per epoch across the processes. Each process
makes the same number of batches, ``steps``: all hold ``batch`` images except the last,
which holds the rest (up to ``batch`` + 1), so no process waits at an all-reduce for one
that has run out. ``datasets.distributed.split_dataset_by_node`` hands out whole shards
instead: with shards of unequal sizes (a last, short tar; row groups of any size) the
processes get unequal counts and the one with more batches waits forever at the end of
the epoch, and with a shard count that is not a multiple of the processes every process
reads every shard (a test shows both).

A process's batches are dealt to ``lanes`` (one per loader worker) round-robin: batch
``i`` is made by lane ``i % lanes``, which reads the images of its batches as one
contiguous piece of the process's range. The DataLoader takes batches from its workers
round-robin, so batches arrive in order ``0, 1, 2, ...`` whatever the workers' speeds,
and a run resumed at batch ``j`` deals batch ``j + k`` to worker ``k``: each worker reads
one lane from where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Mixed into every seed drawn here, so that the orders differ from other uses of the run's seed.
_SALT = 0x5EED_57EA


def seed_sequence(*parts: int) -> np.random.Generator:
    """A generator seeded by ``parts`` (the run's seed, the epoch, ...)."""
    return np.random.default_rng([_SALT, *(int(p) % 2**63 for p in parts)])


def rank_range(n: int, world: int, rank: int) -> tuple[int, int]:
    """The contiguous range of ``n`` positions that process ``rank`` of ``world`` reads."""
    return n * rank // world, n * (rank + 1) // world


def batch_sizes(n: int, world: int, rank: int, batch: int, drop_last: bool = False) -> list[int]:
    """The sizes of process ``rank``'s batches over ``n`` images: the same number on every
    process, the last one taking the rest (see the module docstring). ``drop_last``: only
    full batches, the images past them are left out of the epoch."""
    least = n // world
    start, stop = rank_range(n, world, rank)
    count = stop - start
    if least == 0:
        return []
    if drop_last:
        return [batch] * (least // batch)
    steps = math.ceil(least / batch)
    return [batch] * (steps - 1) + [count - (steps - 1) * batch]


@dataclass(frozen=True)
class Lane:
    """What one lane reads: positions ``[start, stop)`` of the process's order, made into
    the batches ``batches`` (their indices among the process's batches) of ``sizes``."""

    start: int
    stop: int
    batches: list[int]
    sizes: list[int]

    def offset(self, local: int) -> int:
        """Position (from ``start``) of the first image of this lane's ``local``-th batch."""
        return self.start + sum(self.sizes[:local])


def lanes(sizes: list[int], count: int) -> list[Lane]:
    """``count`` lanes over batches of ``sizes``: lane ``l`` makes batches ``l, l + count,
    ...`` from one contiguous piece of the process's order."""
    out, start = [], 0
    for lane in range(count):
        mine = list(range(lane, len(sizes), count))
        theirs = [sizes[i] for i in mine]
        out.append(Lane(start, start + sum(theirs), mine, theirs))
        start += sum(theirs)
    return out


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of shard ``shard`` (rows counted in the shard's own order)."""

    shard: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def pieces(order: np.ndarray, sizes: list[int], start: int, stop: int) -> list[Piece]:
    """The pieces of shards that positions ``[start, stop)`` cover when the shards are
    read one after another in ``order``."""
    out, at = [], 0
    for shard in order.tolist():
        size = sizes[shard]
        lo, hi = max(start, at), min(stop, at + size)
        if lo < hi:
            out.append(Piece(shard, lo - at, hi - at))
        at += size
        if at >= stop:
            break
    return out


def interleaved_counts(lengths: list[int], taken: int) -> np.ndarray:
    """How many rows of each piece the first ``taken`` rows of their round-robin interleave
    (one row of each unfinished piece per round, in order) hold."""
    lengths_a = np.asarray(lengths, dtype=np.int64)
    if taken <= 0 or len(lengths_a) == 0:
        return np.zeros(len(lengths_a), dtype=np.int64)

    def after(rounds: int) -> int:
        return int(np.minimum(lengths_a, rounds).sum())

    lo, hi = 0, int(lengths_a.max())
    while lo < hi:  # the most full rounds that fit in ``taken``
        mid = (lo + hi + 1) // 2
        if after(mid) <= taken:
            lo = mid
        else:
            hi = mid - 1
    counts = np.minimum(lengths_a, lo)
    extra = taken - int(counts.sum())
    open_ = np.flatnonzero(lengths_a > lo)[:extra]
    counts[open_] += 1
    return counts


def sequential_counts(lengths: list[int], taken: int) -> np.ndarray:
    """How many rows of each piece the first ``taken`` rows hold when the pieces are read
    one after another."""
    lengths_a = np.asarray(lengths, dtype=np.int64)
    before = np.concatenate([[0], np.cumsum(lengths_a)[:-1]]) if len(lengths_a) else lengths_a
    return np.clip(taken - before, 0, lengths_a)


def window_order(length: int, seed: int, epoch: int, rank: int, lane: int, window: int) -> np.ndarray:
    """The seeded order of one window of the shuffle buffer."""
    return seed_sequence(seed, epoch, rank, lane, window).permutation(length)
