"""Local WebDataset shards (tar files of KEY.jpg + KEY.cls samples) streamed a tar at a time, read with the ``webdataset`` package."""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from finetune.data.sources import DataError
from finetune.data.streaming.sources import Shard, ShardedSplit, StreamSource, check_splits, class_map
from finetune.recipe import DataConfig

#: File extensions of a sample's image, and of its label, in the order they are preferred.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff", "gif")
LABEL_EXTS = ("cls", "label", "class", "target", "cls.txt", "label.txt")
# webdataset's rule: the key is the path up to the first dot of the file name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(frozen=True)
class TarReader:
    """Reads one tar's samples (image bytes, raw label) from sample ``start`` on (picklable)."""

    path: str
    image_ext: str
    label_ext: str

    def __call__(self, start: int = 0) -> Iterator[tuple[Any, Any]]:
        import webdataset as wds

        n = 0
        # workersplitter None: this reader already is one worker's share (the package would
        # otherwise hand a single tar to worker 0 alone).
        samples = wds.WebDataset(self.path, shardshuffle=False, empty_check=False, workersplitter=None)
        for sample in samples:
            if self.image_ext not in sample:
                continue
            if n >= start:
                value = {"bytes": sample[self.image_ext], "path": f"{self.path}/{sample['__key__']}.{self.image_ext}"}
                yield value, parse_label(sample.get(self.label_ext))
            n += 1


def parse_label(payload: bytes | None) -> Any:
    if payload is None:
        return None
    text = payload.decode("utf-8", errors="replace").strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else text


@dataclass
class _Scan:
    exts: set[str]
    samples: int
    labels: list[Any]


def scan_tar(path: Path, label_ext: str | None) -> _Scan:
    """The extensions, the number of samples with an image, and their labels, from the tar's
    headers and label members alone: images are skipped over (a seek each), not read."""
    groups: dict[str, set[str]] = {}
    labels: dict[str, Any] = {}
    order: list[str] = []
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            match = _KEY_EXT.match(member.name)
            if match is None:
                continue
            key, ext = match.group(1), match.group(2).lower()
            if key not in groups:
                groups[key] = set()
                order.append(key)
            groups[key].add(ext)
            if ext in LABEL_EXTS and (label_ext is None or ext == label_ext):
                labels[key] = parse_label(tar.extractfile(member).read())
    exts = set().union(*groups.values()) if groups else set()
    with_image = [k for k in order if groups[k] & set(IMAGE_EXTS)]
    return _Scan(exts, len(with_image), [labels.get(k) for k in with_image])


def open_tars(files: dict[str, list[Path]], cfg: DataConfig, wanted: list[str], features=None) -> StreamSource:
    """Each split's tar files as shards, sized and labelled from their headers."""
    from datasets import ClassLabel

    check_splits(list(files), cfg, wanted)
    scans = {split: [(path, scan_tar(path, cfg.label_column)) for path in files[split]] for split in wanted}
    exts = set().union(*(s.exts for _, s in scans[wanted[0]]))
    image = cfg.image_column or next((e for e in IMAGE_EXTS if e in exts), None)
    label = cfg.label_column or next((e for e in LABEL_EXTS if e in exts), None)
    if image is None or image not in exts:
        raise DataError(
            f"data.image_column: the WebDataset shards of '{cfg.dataset}' hold no image member "
            f"(extensions found: {', '.join(sorted(exts))}); name it in data.image_column, e.g. \"jpg\""
        )
    if label is None or label not in exts:
        raise DataError(
            f"data.label_column: the WebDataset shards of '{cfg.dataset}' hold no label member "
            f"(extensions found: {', '.join(sorted(exts))}); name it in data.label_column, e.g. \"cls\""
        )
    declared = features[label] if features is not None and label in features else None
    if isinstance(declared, ClassLabel):
        names = list(declared.names)
        mapping: dict[Any, int] = {i: i for i in range(len(names))} | {n: i for i, n in enumerate(names)}
    else:
        values = {v for _, scan in scans[wanted[0]] for v in scan.labels if v is not None}
        numeric = all(isinstance(v, int) for v in values)
        ordered = sorted(values) if numeric else sorted(values, key=str)
        names = [str(v) for v in ordered]
        mapping = {v: i for i, v in enumerate(ordered)}
    splits = {}
    common = _common(files, wanted)
    for split in wanted:
        shards = []
        for path, scan in scans[split]:
            if any(v is None for v in scan.labels):
                raise DataError(
                    f"data: {sum(v is None for v in scan.labels)} sample(s) in '{path}' have no '{label}' member; "
                    "give every sample a label, or name the label's extension in data.label_column"
                )
            theirs = {v for v in scan.labels}
            class_map(names, sorted({names[mapping[v]] if v in mapping else str(v) for v in theirs}), split)
            rel = str(path.relative_to(common)) if common else path.name
            shards.append(Shard(rel, scan.samples, TarReader(str(path), image, label)))
        splits[split] = ShardedSplit(split, shards, mapping)
    return StreamSource(splits, names, image, label, "WebDataset tar shards")


def _common(files: dict[str, list[Path]], wanted: list[str]) -> Path | None:
    import os

    paths = [str(p.parent) for split in wanted for p in files[split]]
    return Path(os.path.commonpath(paths)) if paths else None
