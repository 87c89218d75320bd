"""A streamed split as a torch ``IterableDataset`` of whole uint8 batches, decoded in DataLoader workers, each process reading its own images once per epoch.

The order of an epoch and who reads what are :mod:`finetune.data.streaming.plan`'s; the image
work is :class:`finetune.data.streaming.images.ImagePipeline`'s. A listed split (an image
folder) is read in a seeded permutation of all its images; a sharded split in a seeded
permutation of its shards, the shards of a lane read interleaved (a row of each in turn)
through a seeded shuffle buffer of ``buffer`` images. The buffer is a block: its order is
drawn from the seed, the epoch and the block's place, so a resumed run refills it with
the same images in the same order (``datasets``' own shuffle buffer starts empty on
resume and loses the images it held).

Training batches: an unreadable image is left out of its batch and reported with it
(``bad``). Evaluation batches (``train=False``): every process makes batches of the same
shapes, the rows a process lacks (and unreadable images) filled with label
:data:`PAD_LABEL`, so the Trainer can gather them across processes; the metrics drop those
rows, and every image is scored once.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np
import torch

from finetune.data.sources import DataError
from finetune.data.streaming import endless, plan
from finetune.data.streaming.images import ImagePipeline, decode_upright
from finetune.data.streaming.sources import ListedSplit, Record, ShardedSplit
from finetune.utils.errors import first_line

logger = logging.getLogger(__name__)

#: The label of a padding row in evaluation batches (the Trainer's and torch's ignore index).
PAD_LABEL = -100


class ImageStream(torch.utils.data.IterableDataset):
    """One process's share of a streamed split, as batches (see the module docstring).

    ``lanes``: the loader workers the epoch is dealt to (at least 1); a DataLoader with
    ``num_workers`` equal to it reads each lane in one worker. ``len()`` is the split's
    images in an epoch (all processes); :attr:`num_batches` this process's batches."""

    def __init__(
        self,
        split: ListedSplit | ShardedSplit,
        pipeline: ImagePipeline,
        *,
        batch: int,
        train: bool,
        seed: int,
        world: int = 1,
        rank: int = 0,
        lanes: int = 1,
        buffer: int = 1000,
        drop_last: bool = False,
    ) -> None:
        self.split = split
        self.pipeline = pipeline
        self.batch = batch
        self.train = train
        self.seed = seed
        self.world, self.rank = world, rank
        self.lanes = max(1, lanes)
        self.buffer = max(1, buffer)
        self.drop_last = drop_last and train
        self.epoch = 0
        #: The process's batch index this epoch starts at (a resumed run's position).
        self.start_batch = 0
        #: Shards of unknown sizes: training without epochs (``finetune.data.streaming.endless``).
        self.endless = isinstance(split, ShardedSplit) and split.sizes is None
        if self.endless:
            if not train:
                raise ValueError(f"split '{split.name}' must be counted before it is evaluated")
            self.lanes = endless.lanes_for(len(split.shards), world, self.lanes)
            self.total, self.sizes = None, []
            return
        self.total = len(split)
        if self.total < world:
            raise DataError(
                f"data: split '{split.name}' has {self.total} image(s), fewer than the {world} processes that would "
                "each read a share of it; add images or run fewer processes"
            )
        self.sizes = plan.batch_sizes(self.total, world, rank, batch, self.drop_last)
        if not train:
            # Every process pads each batch to the largest size any process has for it.
            sizes = [plan.batch_sizes(self.total, world, r, batch) for r in range(world)]
            self.padded = [max(column) for column in zip(*sizes)]

    # -------------------------------------------------------------- what the Trainer sees

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError(f"split '{self.split.name}' has shards of unknown sizes: its stream has no length")
        return self.total

    @property
    def num_batches(self) -> int:
        if self.endless:
            raise TypeError(f"split '{self.split.name}' has shards of unknown sizes: its stream has no epochs")
        return len(self.sizes)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_batch = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """Where a run stands in the stream: the epoch, the batches it has made of it, and the
        lanes the epoch was dealt to (a resumed run must deal it the same way)."""
        return {"epoch": self.epoch, "batch": self.start_batch, "lanes": self.lanes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("lanes", self.lanes) != self.lanes:
            raise ValueError(f"the stream was dealt to {state['lanes']} lanes, not {self.lanes}")
        self.epoch, self.start_batch = int(state["epoch"]), int(state["batch"])

    # ------------------------------------------------------------------------ iterating

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            # Each worker decodes on one thread: the workers are the parallelism, and more
            # threads per worker would fight the training process for the same cores.
            torch.set_num_threads(1)
        if self.endless:
            split: ShardedSplit = self.split  # type: ignore[assignment]
            for i, rows in endless.batches(split, self.seed, self.rank, self.world, self.lanes, self.buffer,
                                                  self.batch, self.start_batch, worker, workers):
                yield self._make(i, [record for _, record in rows], [round_ for round_, _ in rows])
            return
        lanes = _Lanes(self)
        for i in range(self.start_batch + worker, len(self.sizes), workers):
            records = lanes.batch(i)
            yield self._make(i, records)

    def _make(self, index: int, records: list[Record], epochs: list[int] | None = None) -> dict[str, Any]:
        images, labels, bad = [], [], []
        for k, record in enumerate(records):
            epoch = epochs[k] if epochs is not None else self.epoch
            try:
                pixels = self.pipeline(decode_upright(record.value), record.key, epoch, self.train)
            except Exception as err:  # noqa: BLE001 - an unreadable image is reported, never fatal here
                bad.append([self.split.name, record.key, f"{type(err).__name__}: {first_line(err)}"])
                if not self.train:
                    images.append(None)
                    labels.append(PAD_LABEL)
                continue
            images.append(pixels)
            labels.append(record.label)
        if not self.train:
            labels += [PAD_LABEL] * (self.padded[index] - len(labels))
            images += [None] * (self.padded[index] - len(images))
        shape = (3, *self.pipeline.size)
        out = torch.zeros((len(images), *shape), dtype=torch.uint8)
        for k, image in enumerate(images):
            if image is not None:
                out[k] = image
        return {"pixel_values": out, "labels": torch.tensor(labels, dtype=torch.int64), "bad": bad}

    def positions(self) -> list[int]:
        """For evaluation: the split position of each row the Trainer gathers, in gathered
        order (batch by batch, process by process), -1 for padding rows."""
        out: list[int] = []
        per_rank = [_Lanes(self, rank) for rank in range(self.world)]
        for index in range(len(self.padded)):
            for lanes in per_rank:
                rows = lanes.batch_rows(index) if index < len(lanes.sizes) else []
                out += rows + [-1] * (self.padded[index] - len(rows))
        return out

    def record(self, position: int) -> Record:
        """The image at ``position`` of the split's evaluation order (for a report's pictures)."""
        split = self.split
        if isinstance(split, ListedSplit):
            return next(split.read([position]))
        for shard, size in enumerate(split.sizes or []):
            if position < size:
                return next(split.read(shard, position))
            position -= size
        raise IndexError("position past the end of the split")


class _Lanes:
    """The records of each batch of one process, read lane by lane (each lane's reader
    kept open between its batches)."""

    def __init__(self, stream: ImageStream, rank: int | None = None) -> None:
        self.s = stream
        rank = stream.rank if rank is None else rank
        self.rank = rank
        self.start, _ = plan.rank_range(stream.total, stream.world, rank)
        self.sizes = plan.batch_sizes(stream.total, stream.world, rank, stream.batch, stream.drop_last)
        self.lanes = plan.lanes(self.sizes, stream.lanes)
        self.readers: dict[int, _LaneReader] = {}
        split = stream.split
        if isinstance(split, ListedSplit):
            if stream.train:
                self.order = plan.seed_sequence(stream.seed, stream.epoch).permutation(len(split))
            else:
                self.order = np.arange(len(split))
        else:
            self.shard_order = (
                plan.seed_sequence(stream.seed, stream.epoch, 1).permutation(len(split.shards))
                if stream.train
                else np.arange(len(split.shards))
            )

    def _where(self, index: int) -> tuple[plan.Lane, int, int]:
        lane = self.lanes[index % self.s.lanes]
        local = index // self.s.lanes
        return lane, local, lane.offset(local)

    def batch_rows(self, index: int) -> list[int]:
        """Split positions of batch ``index`` (listed splits, and the evaluation order)."""
        lane, local, at = self._where(index)
        size = lane.sizes[local]
        if isinstance(self.s.split, ListedSplit):
            return self.order[self.start + at : self.start + at + size].tolist()
        return list(range(self.start + at, self.start + at + size))  # evaluation reads shards in order

    def batch(self, index: int) -> list[Record]:
        lane, local, at = self._where(index)
        size = lane.sizes[local]
        split = self.s.split
        if isinstance(split, ListedSplit):
            return list(split.read(self.order[self.start + at : self.start + at + size]))
        slot = index % self.s.lanes
        reader = self.readers.get(slot)
        if reader is None or reader.position != at - lane.start:
            reader = _LaneReader(self.s, self.shard_order, self.start + lane.start, self.start + lane.stop,
                                 self.rank, slot, at - lane.start)
            self.readers[slot] = reader
        return reader.take(size)


class _LaneReader:
    """One lane of a sharded split, read from ``offset`` on: its pieces of shards
    interleaved through the seeded block buffer (training), or one after another
    (evaluation). Only the block being handed out is held in memory, undecoded."""

    def __init__(
        self, stream: ImageStream, shard_order: np.ndarray, start: int, stop: int, rank: int, lane: int, offset: int
    ) -> None:
        self.s = stream
        split: ShardedSplit = stream.split  # type: ignore[assignment]
        self.pieces = plan.pieces(shard_order, split.sizes or [], start, stop)
        self.rank, self.lane = rank, lane
        self.length = stop - start
        self.window = stream.buffer
        self.position = offset  # lane-relative position of the next image handed out
        first = (offset // self.window) * self.window
        lengths = [len(p) for p in self.pieces]
        counts = plan.interleaved_counts(lengths, first) if stream.train else plan.sequential_counts(lengths, first)
        self._readers = [
            [piece, int(used), split.read(piece.shard, piece.start + int(used)) if used < len(piece) else None]
            for piece, used in zip(self.pieces, counts)
        ]
        self._raw = self._rows()
        self._window_index = first // self.window
        self._buffered: list[Record] = []
        self._fill()
        del self._buffered[: offset - first]

    def _rows(self) -> Iterator[Record]:
        """The lane's rows: a row of each unfinished piece in turn (training), or piece after
        piece (evaluation)."""
        while True:
            progressed = False
            for entry in self._readers:
                piece, used, it = entry
                while it is not None and entry[1] < len(piece):
                    record = next(it, None)
                    if record is None:
                        raise ValueError(
                            f"shard {self.s.split.shards[piece.shard].name} of split '{self.s.split.name}' ended "
                            f"before its stated size ({piece.stop} rows); the data changed while the run used it"
                        )
                    entry[1] += 1
                    progressed = True
                    yield record
                    if self.s.train:
                        break
            if not progressed:
                return

    def _fill(self) -> None:
        block = []
        for _ in range(min(self.window, self.length - self._window_index * self.window)):
            record = next(self._raw, None)
            if record is None:
                break
            block.append(record)
        if self.s.train:
            order = plan.window_order(len(block), self.s.seed, self.s.epoch, self.rank, self.lane, self._window_index)
            block = [block[i] for i in order]
        self._buffered.extend(block)
        self._window_index += 1

    def take(self, size: int) -> list[Record]:
        while len(self._buffered) < size and self._window_index * self.window < self.length:
            self._fill()
        out, self._buffered = self._buffered[:size], self._buffered[size:]
        self.position += len(out)
        return out
