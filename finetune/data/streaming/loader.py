"""The DataLoader of a streamed split: accelerate's ``DataLoaderShard`` (it tells the Trainer where an evaluation ends), one worker per lane, its length in batches."""

from __future__ import annotations

from accelerate.data_loader import DataLoaderShard

from finetune.data.streaming.stream import ImageStream


class StreamLoader(DataLoaderShard):
    """Batches of an :class:`ImageStream`, made whole in its workers (``batch_size=None``).

    Not ``accelerator.prepare``'d: for an ``IterableDataset`` that would have one process
    read everything and send each its share, or every process read everything and keep
    its own; the stream already is this process's share. ``DataLoaderShard`` itself still
    marks the last batch, which the Trainer's batch-wise metrics wait for. ``len()`` is
    the process's batches (the dataset's is the split's images, which the Trainer reports).
    """

    def __init__(self, stream: ImageStream, workers: int, pin_memory: bool = False, prefetch_factor: int | None = None):
        workers = stream.lanes if workers > 0 else 0
        super().__init__(
            stream,
            batch_size=None,
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if workers else None,
            persistent_workers=False,
            # No remainder arithmetic: the stream's evaluation batches are already equal
            # across processes, their padding rows marked.
            _drop_last=True,
        )

    def __len__(self) -> int:
        return self.dataset.num_batches

    def begin(self) -> None:
        super().begin()
        # Nothing to drop from the last gathered batch: its padding rows are marked instead.
        self.remainder = 0


def stream_loader(stream: ImageStream, args) -> StreamLoader:
    """The loader for ``stream`` under the run's TrainingArguments."""
    return StreamLoader(stream, args.dataloader_num_workers, args.dataloader_pin_memory, args.dataloader_prefetch_factor)
