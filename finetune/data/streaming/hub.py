"""Any data set ``datasets`` can stream (a Hub id, a folder it reads itself), a ``datasets`` shard at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from finetune.data.sources import DataError
from finetune.data.streaming.sources import (
    Shard,
    ShardedSplit,
    StreamSource,
    check_splits,
    class_map,
    refuse_multi_label,
)
from finetune.recipe import DataConfig
from finetune.utils.errors import first_line


@dataclass
class HubShardReader:
    """Reads shard ``index`` of ``num_shards`` of a streamed ``datasets.IterableDataset`` from
    row ``start`` on (an ``IterableDataset`` pickles, so DataLoader workers get it)."""

    dataset: Any
    index: int
    num_shards: int
    image_column: str
    label_column: str

    def __call__(self, start: int = 0) -> Iterator[tuple[Any, Any]]:
        shard = self.dataset.shard(num_shards=self.num_shards, index=self.index, contiguous=True)
        if start:
            shard = shard.skip(start)
        # ``iter`` in batches, not ``for row in shard``: inside a DataLoader worker plain
        # iteration deals the data set's shards to the workers itself, and a worker past its
        # shard count gets nothing; here the stream has already chosen the shard.
        for rows in shard.iter(batch_size=64):
            yield from zip(rows[self.image_column], rows[self.label_column])


class _Head:
    """``find_columns``' view of a streamed split: its features and a column's first values."""

    def __init__(self, dataset) -> None:
        self.features = dataset.features
        self._dataset = dataset

    def __getitem__(self, column: str):
        return [row[column] for row in self._dataset.select_columns([column]).take(5)]


def open_hub(cfg: DataConfig, wanted: list[str]) -> StreamSource:
    """``data.dataset`` through ``datasets.load_dataset(..., streaming=True)``. Shard sizes are
    unknown unless the split is a single shard whose size the data set's card states (the
    card's total is kept as a hint)."""
    from datasets import ClassLabel, Image, load_dataset

    from finetune.data.columns import find_columns

    try:
        streams = load_dataset(cfg.dataset, cfg.config, revision=cfg.revision, streaming=True)
    except FileNotFoundError as err:
        raise DataError(f"data.dataset: cannot find '{cfg.dataset}' ({first_line(err)}); check the id or path") from None
    except ValueError as err:
        raise DataError(f"data.dataset: cannot stream '{cfg.dataset}': {first_line(err)}") from None
    check_splits(list(streams), cfg, wanted)
    train = streams[wanted[0]]
    if train.features is None:
        raise DataError(
            f"data.dataset: '{cfg.dataset}' does not state its columns' types, which streaming needs; "
            "set data.streaming to false"
        )
    image, label = find_columns(_Head(train), cfg)
    feature = train.features[label]
    refuse_multi_label(label, cfg, feature)
    if not isinstance(feature, ClassLabel):
        raise DataError(
            f"data.label_column: '{label}' of '{cfg.dataset}' is not a ClassLabel, so its classes are unknown until "
            "every image is read; set data.streaming to false (the decode cache reads them), or use a data set "
            "that declares its classes"
        )
    names = list(feature.names)
    splits = {}
    for split in wanted:
        ds = streams[split]
        theirs = ds.features[label] if ds.features is not None and label in ds.features else None
        mapping = class_map(names, list(theirs.names), split) if isinstance(theirs, ClassLabel) else None
        if isinstance(ds.features[image], Image):
            ds = ds.cast_column(image, Image(decode=False))
        info = (ds.info.splits or {}).get(split) if ds.info is not None else None
        stated = info.num_examples if info is not None and info.num_examples else None
        known = stated if ds.n_shards == 1 else None
        shards = [
            Shard(f"{split}-{i:05d}", known, HubShardReader(ds, i, ds.n_shards, image, label))
            for i in range(ds.n_shards)
        ]
        splits[split] = ShardedSplit(split, shards, mapping, stated)
    return StreamSource(splits, names, image, label, "datasets streaming shards")
