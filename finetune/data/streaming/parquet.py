"""Parquet files streamed a row group at a time: each row group a shard, its size from the file's own metadata."""

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

#: Rows decoded from parquet at a time: small, so a reader holds a few megabytes, not a
#: whole row group of encoded images.
_ROWS_PER_READ = 64


def open_file(path: str):
    """A parquet file to read: a local path as it is, a URL (``hf://`` for the Hub, as
    ``datasets`` names remote data files) through fsspec, which reads what is asked for."""
    import pyarrow.parquet as pq

    if "://" in path:
        import fsspec

        return pq.ParquetFile(fsspec.open(path, "rb").open())
    return pq.ParquetFile(path)


@dataclass(frozen=True)
class RowGroupReader:
    """Reads one row group's image and label columns from row ``start`` on (picklable, for
    DataLoader workers)."""

    path: str
    row_group: int
    image_column: str
    label_column: str

    def __call__(self, start: int = 0) -> Iterator[tuple[Any, Any]]:
        skipped = 0
        with open_file(self.path) as f:
            for batch in f.iter_batches(
                batch_size=_ROWS_PER_READ, row_groups=[self.row_group], columns=[self.image_column, self.label_column]
            ):
                if skipped + batch.num_rows <= start:
                    skipped += batch.num_rows
                    continue
                images = batch.column(self.image_column).to_pylist()
                labels = batch.column(self.label_column).to_pylist()
                first = max(0, start - skipped)
                skipped += batch.num_rows
                yield from zip(images[first:], labels[first:])


class _Head:
    """What ``finetune.data.columns.find_columns`` reads of a data set: its features and
    the first values of a column."""

    def __init__(self, features, path: str) -> None:
        self.features = features
        self._path = path

    def __getitem__(self, column: str):
        with open_file(self._path) as f:
            return next(f.iter_batches(batch_size=5, columns=[column])).column(column).to_pylist()


def open_parquet(files: dict[str, list], cfg: DataConfig, wanted: list[str]) -> StreamSource:
    """The parquet files of each split (local paths or URLs) as row-group shards; their
    footers are read in parallel (a Hub data set has hundreds of files)."""
    from concurrent.futures import ThreadPoolExecutor

    from datasets import ClassLabel

    from finetune.data.columns import find_columns

    check_splits(list(files), cfg, wanted)
    paths = {split: [str(p) for p in files[split]] for split in wanted}
    train = paths[wanted[0]]
    if not train:
        raise DataError(f"data.train_split: split '{wanted[0]}' of '{cfg.dataset}' has no parquet file")
    every = sorted({p for split in wanted for p in paths[split]})
    with ThreadPoolExecutor(max_workers=16) as pool:
        footers = dict(zip(every, pool.map(_footer, every)))
    features = footers[train[0]][0]
    image, label = find_columns(_Head(features, train[0]), cfg)
    common = _common_root(every)
    declared = isinstance(features[label], ClassLabel)
    given = [] if declared else [v for p in train for v in _column(p, label)]
    refuse_multi_label(label, cfg, features[label], given)
    names = list(features[label].names) if declared else sorted({str(v) for v in given})
    splits: dict[str, ShardedSplit] = {}
    for split in wanted:
        shards = []
        for path in paths[split]:
            theirs, sizes = footers[path]
            missing = [c for c in (image, label) if c not in theirs]
            if missing:
                raise DataError(f"data: split '{split}' lacks column(s) {', '.join(missing)} that train has ({path})")
            rel = path[len(common):].lstrip("/") if common else path.rsplit("/", 1)[-1]
            shards += [Shard(f"{rel}:{rg}", size, RowGroupReader(path, rg, image, label)) for rg, size in enumerate(sizes)]
        if declared:
            their_names = list(theirs[label].names) if isinstance(theirs[label], ClassLabel) else names
            mapping = class_map(names, their_names, split)
        else:
            # Labels as plain values: the classes are the sorted values of train's label
            # column, read alone (a column projection: no image bytes).
            seen = {v for p in paths[split] for v in _column(p, label)}
            class_map(names, sorted({str(v) for v in seen}), split)  # unknown classes: one clear error
            index = {n: i for i, n in enumerate(names)}
            mapping = {v: index[str(v)] for v in seen}
        splits[split] = ShardedSplit(split, shards, mapping)
    return StreamSource(splits, names, image, label, "parquet row groups")


def _footer(path: str):
    """A parquet file's features (with the Hub's ``huggingface`` metadata) and row-group sizes."""
    from datasets import Features

    with open_file(path) as f:
        return Features.from_arrow_schema(f.schema_arrow), [
            f.metadata.row_group(rg).num_rows for rg in range(f.metadata.num_row_groups)
        ]


def _column(path: str, column: str) -> list:
    with open_file(path) as f:
        return f.read(columns=[column]).column(column).to_pylist()


def _common_root(paths: list[str]) -> str:
    """The longest folder every path lies in ('' for none)."""
    parents = [p.rsplit("/", 1)[0] for p in paths]
    if not parents:
        return ""
    prefix = parents[0]
    for parent in parents[1:]:
        while not (parent == prefix or parent.startswith(prefix + "/")):
            if "/" not in prefix:
                return ""
            prefix = prefix.rsplit("/", 1)[0]
    return prefix
