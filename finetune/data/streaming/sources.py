"""Where streamed images come from: each split as a list of images (random access) or as shards read in order, with nothing decoded and nothing written to disk.

Two shapes, because they are read differently:

- :class:`ListedSplit`: a local image folder, or a CSV / JSON-lines file listing image
  paths. Every image is known up front (path, label, key) without opening it, so an epoch
  can be a full seeded permutation and each process opens only its own files.
- :class:`ShardedSplit`: parquet row groups, WebDataset tar files, or the shards of a
  Hub data set streamed by ``datasets``. Each shard is read in order; its size comes from
  the file's own metadata (parquet), a scan of the tar headers (local tars), or is unknown.

``finetune.data.streaming.open.open_stream`` picks the reader; each finds the image and label columns with the same rules as the decode-cache
path (``finetune.data.columns``) and maps every split onto train's classes by name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from finetune.data.sources import FILE_BUILDERS, DataError, looks_like_image_paths
from finetune.recipe import DataConfig
from finetune.utils.images import is_junk

#: Files the image-folder lister leaves to ``datasets`` (they change how it reads a folder).
_METADATA = {"metadata.csv", "metadata.jsonl", "metadata.parquet"}
_TABLE_EXTENSIONS = set(FILE_BUILDERS) | {".tsv", ".ndjson", ".lance", ".tar", ".zip"}


@dataclass(frozen=True)
class Record:
    """One undecoded image: its stable key, what ``finetune.utils.images`` opens, its class."""

    key: str
    value: Any
    label: int


@dataclass
class ListedSplit:
    """A split whose every image is known without opening it: read in any order."""

    name: str
    keys: np.ndarray  # object array of str: the path relative to the data set
    values: np.ndarray  # object array: an absolute path, or an undecoded Image value
    labels: np.ndarray  # int64 class indices in the run's classes

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, rows: np.ndarray, name: str | None = None) -> ListedSplit:
        return ListedSplit(name or self.name, self.keys[rows], self.values[rows], self.labels[rows])

    def read(self, rows) -> Iterator[Record]:
        for i in rows:
            yield Record(self.keys[i], self.values[i], int(self.labels[i]))


@dataclass
class Shard:
    """One shard: a stable name (part of each image's key), its size when known, and how to read it."""

    name: str
    size: int | None
    reader: Any  # a picklable callable: reader(start) -> iterator of (value, raw label), from row ``start``


@dataclass
class ShardedSplit:
    """A split read shard by shard, each in order. Keys are ``shard name#row``."""

    name: str
    shards: list[Shard]
    #: raw label value → class index in the run's classes.
    label_map: dict[Any, int] | None = None
    #: The split's size as its data set card states it, when its shards' sizes are unknown.
    total_hint: int | None = None

    @property
    def sizes(self) -> list[int] | None:
        sizes = [s.size for s in self.shards]
        return None if any(s is None for s in sizes) else sizes  # type: ignore[return-value]

    def __len__(self) -> int:
        sizes = self.sizes
        if sizes is None:
            raise TypeError(f"split '{self.name}' has shards of unknown size")
        return sum(sizes)

    def read(self, shard: int, start: int = 0) -> Iterator[Record]:
        s = self.shards[shard]
        for row, (value, raw) in enumerate(s.reader(start), start):
            yield Record(f"{s.name}#{row}", value, self._label(raw))

    def counted(self) -> ShardedSplit:
        """This split with each shard's size counted by reading it once (nothing decoded),
        several shards at a time: what an evaluation split of unknown sizes needs."""
        from concurrent.futures import ThreadPoolExecutor

        def size(shard: Shard) -> int:
            return shard.size if shard.size is not None else sum(1 for _ in shard.reader(0))

        with ThreadPoolExecutor(max_workers=8) as pool:
            sizes = list(pool.map(size, self.shards))
        shards = [Shard(s.name, n, s.reader) for s, n in zip(self.shards, sizes)]
        return ShardedSplit(self.name, shards, self.label_map, self.total_hint)

    def _label(self, raw: Any) -> int:
        if self.label_map is None:
            return int(raw)
        try:
            return self.label_map[raw]
        except KeyError:
            raise DataError(
                f"data: split '{self.name}' has an image of class '{raw}' that train does not have; fix the labels"
            ) from None


@dataclass
class StreamSource:
    """The splits of ``data.dataset`` as streams, and what the run needs to know about them."""

    splits: dict[str, ListedSplit | ShardedSplit]
    class_names: list[str]
    image_column: str
    label_column: str
    #: How the splits are read, for the log: "image folder", "parquet row groups", ...
    kind: str
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ listing


def _split_keywords() -> dict[str, str]:
    """The folder names `datasets` takes as splits, each → its split (``val`` → validation)."""
    from datasets.data_files import SPLIT_KEYWORDS

    return {keyword: str(split) for split, keywords in SPLIT_KEYWORDS.items() for keyword in keywords}


def list_image_folder(root: Path) -> tuple[dict[str, ListedSplit], list[str]] | None:
    """The images of a local folder in the usual layout, ``CLASS/image`` or
    ``SPLIT/CLASS/image`` (a split folder named as ``datasets`` names them: train, val,
    test, ...), listed by one walk; None for any other layout, which ``datasets`` reads.

    ``datasets``' own listing tests about 45 file patterns against the folder, each a
    walk of it: 20 to 40 seconds for 20,000 images, before the first training step. The
    classes and splits here are what it finds for these layouts (a test checks it): the
    class is the image's folder, classes are sorted by name, hidden entries and those
    starting with ``__`` are skipped, and a split or class name with a split keyword
    inside it (``cat_test``), which ``datasets`` would read as a split, hands the folder to
    ``datasets``.
    """
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    keywords = _split_keywords()
    keyword_inside = re.compile(r"(^|[-._ 0-9])(" + "|".join(map(re.escape, keywords)) + r")([-._ 0-9]|$)")
    extensions = set(ImageFolder.EXTENSIONS)
    found: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        seen.add(os.path.realpath(folder))
        dirs[:] = sorted(
            d for d in dirs
            if not (d.startswith((".", "__")) or is_junk(d, folder=True))
            and os.path.realpath(os.path.join(folder, d)) not in seen
        )
        rel = Path(folder).relative_to(root).parts
        for name in names:
            if name.startswith((".", "__")) or is_junk(name):
                continue
            suffix = Path(name).suffix.lower()
            if name.lower() in _METADATA or suffix in _TABLE_EXTENSIONS:
                return None  # metadata or data files: datasets decides what they mean
            if suffix in extensions:
                found.append((*rel, name))
            elif name.lower() == "readme.md" and not rel and _has_yaml_header(Path(folder) / name):
                return None  # a data set card may configure the splits
    depths = {len(parts) for parts in found}
    if len(depths) != 1 or depths.pop() not in (2, 3):
        return None
    by_split: dict[str, list[tuple[str, str]]] = {}
    for parts in found:
        *where, name = parts
        if len(where) == 2:
            split_dir, cls = where
            if split_dir not in keywords:
                return None
            split = keywords[split_dir]
        else:
            split, cls = "train", where[0]
        if keyword_inside.search(cls.lower()) or keyword_inside.search(Path(name).stem.lower()):
            return None
        if len(where) == 1 and cls.lower() in keywords:
            return None
        by_split.setdefault(split, []).append(("/".join(parts), cls))
    names = sorted({cls for items in by_split.values() for _, cls in items})
    if len(names) < 2:
        return None  # datasets adds no label column then; its error names the problem
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    for split, items in by_split.items():
        items.sort()
        keys = np.array([k for k, _ in items], dtype=object)
        values = np.array([str(root / k) for k in keys], dtype=object)
        labels = np.array([index[c] for _, c in items], dtype=np.int64)
        splits[split] = ListedSplit(split, keys, values, labels)
    return splits, names


def _has_yaml_header(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().strip() == "---"
    except OSError:
        return False


def open_table(path: Path, cfg: DataConfig, wanted: list[str]) -> StreamSource:
    """A CSV / JSON-lines file listing image paths (relative to the file): the table is read
    (it is small), the images are not."""
    from datasets import load_dataset

    ds = load_dataset(FILE_BUILDERS[path.suffix.lower()], data_files={"train": str(path)}, streaming=True)["train"]
    rows = list(ds)
    if not rows:
        raise DataError(f"data.dataset: '{path}' lists no images")
    columns = list(rows[0])
    image = cfg.image_column or next(
        (c for c in columns if looks_like_image_paths([r[c] for r in rows[:5]])), None
    )
    if image is None or image not in columns:
        raise DataError(
            f"data.image_column: no column of '{path}' holds image file paths (columns: {', '.join(columns)}); "
            "name it in data.image_column"
        )
    from finetune.data.columns import LABEL_NAMES

    label = cfg.label_column or next((c for c in columns if c.lower() in LABEL_NAMES and c != image), None)
    if label is None and len(columns) == 2:
        label = next(c for c in columns if c != image)
    if label is None or label not in columns:
        raise DataError(
            f"data.label_column: cannot tell which column of '{path}' holds the labels; set data.label_column to "
            f"one of: {', '.join(c for c in columns if c != image)}"
        )
    refuse_multi_label(label, cfg, values=[r[label] for r in rows])
    names = sorted({str(r[label]) for r in rows})
    index = {n: i for i, n in enumerate(names)}
    base = path.parent
    keys = np.array([str(r[image]) for r in rows], dtype=object)
    values = np.array([k if os.path.isabs(k) else str(base / k) for k in keys], dtype=object)
    labels = np.array([index[str(r[label])] for r in rows], dtype=np.int64)
    splits = {"train": ListedSplit("train", keys, values, labels)}
    return listed_source(splits, names, image, label, cfg, wanted, "table of image paths")


def listed_source(
    splits: dict[str, ListedSplit], names: list[str], image: str, label: str, cfg: DataConfig, wanted: list[str], kind: str
) -> StreamSource:
    check_splits(list(splits), cfg, wanted)
    for key, named, ours in (("image_column", cfg.image_column, image), ("label_column", cfg.label_column, label)):
        if named is not None and named != ours:
            raise DataError(f"data.{key}: no column '{named}' in the data; columns are: {image}, {label}")
    return StreamSource({s: splits[s] for s in wanted if s in splits}, names, image, label, kind)


def refuse_multi_label(label: str, cfg: DataConfig, feature: Any = None, values: Any = ()) -> None:
    """A DataError when the label column holds several classes per image (a list feature or
    list values, or with ``data.task`` "auto" text holding ``data.label_separator``): the
    streaming path reads one class per image, and "auto" then takes the decode cache."""
    from finetune.data.columns import is_list_feature

    listed = (feature is not None and is_list_feature(feature)) or any(isinstance(v, (list, tuple)) for v in values)
    separated = cfg.task == "auto" and any(isinstance(v, str) and cfg.label_separator in v for v in values)
    if listed or separated or cfg.task == "multi_label":
        what = f"'{label}' holds several classes per image" if listed or separated else "data.task is 'multi_label'"
        raise DataError(
            f"data.streaming: {what} (multi-label data), which the streaming path does not read (it reads one class "
            "per image); set data.streaming to false or 'auto' (the decode cache reads it)"
        )


def check_splits(available: list[str], cfg: DataConfig, wanted: list[str]) -> None:
    """The same one-line errors as the decode-cache path for a split the data lacks."""
    for split in wanted:
        if split in available:
            continue
        key = "train_split" if split == cfg.train_split else "eval_split"
        raise DataError(
            f"data.{key}: '{split}' is not a split of '{cfg.dataset}'; it has: {', '.join(sorted(available))}"
        )


def class_map(names: list[str], theirs: list[str], split: str) -> dict[int, int] | None:
    """Index in ``theirs`` → index in ``names`` (None: the same classes in the same order);
    DataError when ``split`` has classes that train lacks."""
    if list(theirs) == list(names):
        return None
    unknown = sorted(set(theirs) - set(names))
    if unknown:
        raise DataError(
            f"data: split '{split}' has classes that train does not: {', '.join(unknown[:10])}"
            f"{' …' if len(unknown) > 10 else ''}; fix the labels or drop those images"
        )
    index = {n: i for i, n in enumerate(names)}
    return {i: index[n] for i, n in enumerate(theirs)}
