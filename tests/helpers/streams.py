"""Streamed sources for the tests: WebDataset tars and parquet files of unequal shards, and a stream read the way the Trainer reads it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.helpers.images import CLASSES, class_image


def jpeg(image: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **kw)
    return out.getvalue()


def write_tars(root: Path, sizes: list[int], split: str = "train", seed: int = 0) -> list[Path]:
    """Tars of ``sizes[i]`` samples (KEY.jpg + KEY.cls, label = index % 3), in ``root``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths, n = [], 0
    for s, size in enumerate(sizes):
        path = root / f"{split}-{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(size):
                label = n % 3
                for ext, payload in (("jpg", jpeg(class_image(CLASSES[label], rng))), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"s{n:06d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                n += 1
        paths.append(path)
    return paths


def write_parquet(path: Path, row_groups: list[int], seed: int = 0, names: list[str] | None = None) -> Path:
    """A parquet file with an Image column and a ClassLabel column, in row groups of these sizes."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    n = sum(row_groups)
    names = names or sorted(CLASSES)
    images = [{"bytes": jpeg(class_image(CLASSES[i % 3], rng)), "path": None} for i in range(n)]
    labels = [i % len(names) for i in range(n)]
    ds = Dataset.from_dict({"image": images, "label": labels},
                           features=Features({"image": ImageFeature(), "label": ClassLabel(names=names)}))
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = ds.with_format("arrow")[:]
    table = table.replace_schema_metadata(ds.data.table.schema.metadata)
    with pq.ParquetWriter(path, table.schema) as writer:
        start = 0
        for size in row_groups:
            writer.write_table(table.slice(start, size))
            start += size
    return path


def batches(stream, workers: int = 0) -> list[dict]:
    """Every batch of one epoch of ``stream``, as a DataLoader with ``workers`` gives them."""
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return list(loader)


def write_arrow_folder(root: Path, splits: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """A folder of Arrow files per split (``split → (images, files)``), which ``datasets``
    streams without stating the files' sizes."""
    import shutil

    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=sorted(CLASSES))})
    for split, (count, files) in splits.items():
        images = [class_image(CLASSES[i % 3], rng) for i in range(count)]
        ds = Dataset.from_dict({"image": images, "label": [sorted(CLASSES).index(CLASSES[i % 3]) for i in range(count)]},
                               features=features)
        (root / split).mkdir(parents=True, exist_ok=True)
        for part in range(files):
            saved = root / "saved" / f"{split}{part}"
            ds.shard(files, part, contiguous=True).save_to_disk(str(saved))
            shutil.copy(next(saved.glob("data-*.arrow")), root / split / f"{split}-{part:05d}.arrow")
    shutil.rmtree(root / "saved")
    return root
