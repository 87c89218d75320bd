"""The validation piece of a streamed train split, decided image by image by a seeded hash of its key: no pass over the data first, the same piece on every process and every re-run."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from finetune.data.streaming.sources import ListedSplit, Record, Shard, ShardedSplit

_MASK = np.uint64(2**64 - 1)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a well-mixed 64-bit hash of each 64-bit integer."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return x ^ (x >> np.uint64(31))


def _text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def uniform(hashes: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) for each 64-bit key hash, a pure function of it and ``seed``."""
    mixed = _splitmix64(hashes.astype(np.uint64) ^ np.uint64(_text_hash(f"validation|{seed}")))
    return (mixed >> np.uint64(11)).astype(np.float64) / float(2**53)


def key_hashes(keys) -> np.ndarray:
    return np.fromiter((_text_hash(str(k)) for k in keys), dtype=np.uint64, count=len(keys))


def row_hashes(shard_name: str, rows: int) -> np.ndarray:
    """The hashes of keys ``shard_name#0`` … ``shard_name#(rows-1)``, vectorised."""
    return _splitmix64(np.uint64(_text_hash(shard_name)) ^ np.arange(rows, dtype=np.uint64))


def listed_validation(split: ListedSplit, fraction: float, seed: int) -> np.ndarray:
    """Which images of a listed split form the validation piece: in each class, the
    round(fraction × its size) images with the smallest hash values, at most all but one
    (every class keeps a training image). Stratified exactly: the labels are known."""
    u = uniform(key_hashes(split.keys), seed)
    chosen = np.zeros(len(split), dtype=bool)
    for c in np.unique(split.labels):
        rows = np.flatnonzero(split.labels == c)
        take = min(int(round(fraction * len(rows))), len(rows) - 1)
        if take > 0:
            chosen[rows[np.argsort(u[rows], kind="stable")[:take]]] = True
    return chosen


def shard_validation(shard_name: str, rows: int, fraction: float, seed: int) -> np.ndarray:
    """Which rows of a shard are in the validation piece: those whose hash falls below
    ``fraction``. Each class gets about its share (stratified approximately: the labels are
    not read to decide)."""
    return uniform(row_hashes(shard_name, rows), seed) < fraction


@dataclass(frozen=True)
class _FilteredReader:
    """A shard's reader that yields only the rows in ``keep``; ``start`` counts kept rows."""

    reader: object
    keep: np.ndarray

    def __call__(self, start: int = 0) -> Iterator[tuple]:
        kept = np.flatnonzero(self.keep)
        if start >= len(kept):
            return
        first = int(kept[start])
        for row, item in enumerate(self.reader(first), first):  # type: ignore[operator]
            if self.keep[row]:
                yield row, item


class FilteredSplit(ShardedSplit):
    """The rows of a sharded split that one piece keeps (train, or its validation piece):
    sizes are counted from the hashes, which need no reading. Keys stay those of the rows
    in their shard, so an image's key, crop seed and piece never depend on the filter."""

    def __init__(self, base: ShardedSplit, name: str, masks: list[np.ndarray]) -> None:
        shards = [
            Shard(s.name, int(m.sum()), _FilteredReader(s.reader, m)) for s, m in zip(base.shards, masks)
        ]
        super().__init__(name, shards, base.label_map)

    def read(self, shard: int, start: int = 0) -> Iterator[Record]:
        s = self.shards[shard]
        for row, (value, raw) in s.reader(start):
            yield Record(f"{s.name}#{row}", value, self._label(raw))


def split_sharded(split: ShardedSplit, fraction: float, seed: int) -> tuple[FilteredSplit, FilteredSplit]:
    """(train, validation piece) of a sharded split with known shard sizes."""
    masks = [shard_validation(s.name, int(s.size or 0), fraction, seed) for s in split.shards]
    return FilteredSplit(split, split.name, [~m for m in masks]), FilteredSplit(split, "validation", masks)
