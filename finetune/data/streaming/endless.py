"""A training stream over shards of unknown sizes (a Hub WebDataset, a loading script): no epoch can be cut into equal ranges, so each process reads its own shards round after round and training runs for ``training.max_steps``.

Round ``e`` is a seeded permutation of the shards, of which process ``rank`` takes every
``world``-th (the shards ``split_dataset_by_node`` would give it when their number is a
multiple of the processes; here it only needs to be at least that number), and deals them to
its lanes (loader workers) in turn. Each lane reads its shards one after another through
the seeded block buffer, round after round without end, and cuts its rows into batches
of exactly ``batch`` images, so no process runs out before another. Batch ``i`` of the
process is the ``i // lanes``-th of lane ``i % lanes``: a resumed run skips, in each
lane, the rows of the batches it made (read again, not decoded).
"""

from __future__ import annotations

from typing import Iterator

from finetune.data.sources import DataError
from finetune.data.streaming import plan
from finetune.data.streaming.sources import Record, ShardedSplit


def lanes_for(shards: int, world: int, lanes: int) -> int:
    """How many lanes a process of ``world`` can keep busy: each needs a shard every round."""
    if shards < world:
        raise DataError(
            f"data: the stream has {shards} shard(s), fewer than the {world} processes that would each read its "
            "own; re-shard the data into at least that many files, or run fewer processes"
        )
    return max(1, min(lanes, shards // world))


def lane_rows(split: ShardedSplit, seed: int, rank: int, world: int, lane: int, lanes: int,
              buffer: int, first_round: int = 0) -> Iterator[tuple[int, Record]]:
    """(round, row) for lane ``lane`` of process ``rank``, without end."""
    round_ = first_round
    while True:
        order = plan.seed_sequence(seed, round_, 1).permutation(len(split.shards))
        mine = order[rank::world][lane::lanes].tolist()
        window, block, rows = 0, [], 0
        for shard in mine:
            for record in split.read(shard):
                block.append(record)
                rows += 1
                if len(block) == buffer:
                    yield from _shuffled(block, seed, round_, rank, lane, window)
                    window, block = window + 1, []
        if rows == 0:
            # Without this the lane would go round its empty shards forever.
            names = ", ".join(split.shards[i].name for i in mine)
            raise DataError(f"data: shard(s) {names} of split '{split.name}' hold no rows; remove the empty files")
        yield from _shuffled(block, seed, round_, rank, lane, window)
        round_ += 1


def _shuffled(block: list[Record], seed: int, round_: int, rank: int, lane: int, window: int):
    for i in plan.window_order(len(block), seed, round_, rank, lane, window):
        yield round_, block[i]


def batches(split: ShardedSplit, seed: int, rank: int, world: int, lanes: int, buffer: int, batch: int,
            start: int, worker: int, workers: int) -> Iterator[tuple[int, list[tuple[int, Record]]]]:
    """(process batch index, its rows) for the batches ``worker`` of ``workers`` makes, from
    process batch ``start`` on: batch ``i`` is lane ``i % lanes``'s ``i // lanes``-th."""
    readers: dict[int, Iterator[tuple[int, Record]]] = {}
    made: dict[int, int] = {}
    i = start + worker
    while True:
        lane, local = i % lanes, i // lanes
        if lane not in readers:
            readers[lane] = lane_rows(split, seed, rank, world, lane, lanes, buffer)
            made[lane] = 0
        for _ in range((local - made[lane]) * batch):  # a resumed lane passes its earlier batches' rows
            next(readers[lane])
        rows = [next(readers[lane]) for _ in range(batch)]
        made[lane] = local + 1
        yield i, rows
        i += workers
