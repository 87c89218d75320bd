"""Parquet files streamed a row group at a time: each row group a shard, its size from the file's own metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from finetune.data.sources import DataError
from finetune.data.stream_sources import Shard, ShardedSplit, StreamSource, check_splits, class_map
from finetune.recipe import DataConfig

#: Rows decoded from parquet at a time: small, so a reader holds a few megabytes, not a
#: whole row group of encoded images.
_ROWS_PER_READ = 64


@dataclass(frozen=True)
class RowGroupReader:
    """Reads one row group's image and label columns from row ``start`` on (picklable, for
    DataLoader workers)."""

    path: str
    row_group: int
    image_column: str
    label_column: str

    def __call__(self, start: int = 0) -> Iterator[tuple[Any, Any]]:
        import pyarrow.parquet as pq

        skipped = 0
        with pq.ParquetFile(self.path) as f:
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

    def __init__(self, features, path: Path) -> None:
        self.features = features
        self._path = path

    def __getitem__(self, column: str):
        import pyarrow.parquet as pq

        with pq.ParquetFile(self._path) as f:
            return next(f.iter_batches(batch_size=5, columns=[column])).column(column).to_pylist()


def open_parquet(files: dict[str, list[Path]], cfg: DataConfig, wanted: list[str]) -> StreamSource:
    """The parquet files of each split as row-group shards."""
    import pyarrow.parquet as pq
    from datasets import ClassLabel, Features

    from finetune.data.columns import find_columns

    check_splits(list(files), cfg, wanted)
    train = files[wanted[0]]
    if not train:
        raise DataError(f"data.train_split: split '{wanted[0]}' of '{cfg.dataset}' has no parquet file")
    with pq.ParquetFile(train[0]) as f:
        features = Features.from_arrow_schema(f.schema_arrow)
    image, label = find_columns(_Head(features, train[0]), cfg)
    common = _common_root([p for split in wanted for p in files[split]])
    splits: dict[str, ShardedSplit] = {}
    names: list[str] | None = list(features[label].names) if isinstance(features[label], ClassLabel) else None
    if names is None:
        # Labels as plain values: the classes are the sorted values of train's label
        # column, read alone (a column projection: no image bytes).
        values = set()
        for path in train:
            values |= {str(v) for v in pq.read_table(path, columns=[label]).column(label).to_pylist()}
        names = sorted(values)
    for split in wanted:
        shards = []
        for path in files[split]:
            with pq.ParquetFile(path) as f:
                theirs = Features.from_arrow_schema(f.schema_arrow)
                missing = [c for c in (image, label) if c not in theirs]
                if missing:
                    raise DataError(f"data: split '{split}' lacks column(s) {', '.join(missing)} that train has ({path})")
                rel = str(path.relative_to(common)) if common else path.name
                for rg in range(f.metadata.num_row_groups):
                    size = f.metadata.row_group(rg).num_rows
                    shards.append(Shard(f"{rel}:{rg}", size, RowGroupReader(str(path), rg, image, label)))
        if isinstance(features[label], ClassLabel):
            their_names = list(theirs[label].names) if isinstance(theirs[label], ClassLabel) else names
            mapping = class_map(names, their_names, split)
        else:
            mapping = {}
            index = {n: i for i, n in enumerate(names)}
            seen = set()
            for path in files[split]:
                seen |= set(pq.read_table(path, columns=[label]).column(label).to_pylist())
            class_map(names, sorted({str(v) for v in seen}), split)  # unknown classes: one clear error
            mapping = {v: index[str(v)] for v in seen}
        splits[split] = ShardedSplit(split, shards, mapping)
    return StreamSource(splits, names, image, label, "parquet row groups")


def _common_root(paths: list[Path]) -> Path | None:
    import os

    try:
        return Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else None
    except ValueError:
        return None
