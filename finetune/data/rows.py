"""Batches read straight from a decoded split's memory-mapped cache: one copy per image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from finetune.data.decode import HWC_COLUMN, image_size, pixel_column
from finetune.utils import compat


class FastRows(torch.utils.data.Dataset):
    """A decoded split as a DataLoader reads it: a batch is one gather into one uint8 tensor.

    Through datasets, a batch of ``Array3D`` rows costs an Arrow ``take`` (a copy), one
    numpy array per row (datasets' numpy formatter also widens uint8 to int64, eight bytes
    for each), and a stacking collator (another copy): as much time as the whole rest of the
    input pipeline at 224 px. Here each row is copied once, from zero-copy numpy views of
    the memory-mapped Arrow buffers straight into the batch tensor, a fraction of that
    time. ``__getitems__`` returns a :class:`RowBatch`: the rows a collator expects (views
    into the batch), carrying the batch itself for :func:`collate`.
    A channels-last split (``decode(channels_last=True)``) gives the same N×3×H×W batches,
    with channels-last strides.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self._views: _RowViews | None = None

    @classmethod
    def wrap(cls, dataset):
        """``dataset`` in a FastRows when it is a decoded split; anything else unchanged."""
        from datasets import Dataset

        if isinstance(dataset, Dataset) and pixel_column(dataset) is not None:
            return cls(dataset)
        return dataset

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get the dataset pickled: views of memory-mapped buffers would be
        # pickled as copies of the whole split. A worker makes its own views on first use.
        return {"dataset": self.dataset, "_views": None}

    def _arrays(self) -> _RowViews:
        """Zero-copy flat views (a row per image) of each Arrow chunk's valid rows, and for every
        physical row its chunk and its position in that chunk's view (-1: a bad image)."""
        if self._views is None:
            table = self.dataset.data  # the physical Arrow table, memory-mapped from the cache
            column = pixel_column(self.dataset)
            stored = tuple(self.dataset.features[column].shape)
            h, w = image_size(self.dataset)
            shape = (h, w, 3) if column == HWC_COLUMN else stored
            views, chunk_of, position = [], [], []
            for c, chunk in enumerate(table.column(column).chunks):
                # Not chunk.to_numpy(): with a null row (a bad image, set aside by the indices
                # mapping) datasets makes a float64 copy of the whole chunk. Null entries
                # of a list array hold no values, so the flattened values are the valid rows.
                storage = getattr(chunk, "storage", chunk)
                valid = ~storage.is_null().to_numpy(zero_copy_only=False)
                flat = storage
                for _ in stored:
                    flat = flat.flatten()
                # One flat row per image: numpy copies an (H, W, 3) row 3 bytes at a time.
                views.append(flat.to_numpy(zero_copy_only=True).reshape(-1, int(np.prod(shape))))
                chunk_of.append(np.full(len(valid), c, dtype=np.int64))
                position.append(np.where(valid, np.cumsum(valid) - 1, -1))
            self._views = _RowViews(
                shape=shape,
                channels_last=column == HWC_COLUMN,
                chunks=views,
                chunk_of=np.concatenate(chunk_of) if chunk_of else np.zeros(0, np.int64),
                position=np.concatenate(position) if position else np.zeros(0, np.int64),
                labels=_labels(self.dataset, table),
                # select() leaves the table alone and maps rows (e.g. after setting bad
                # files aside): logical row i is physical row physical[i].
                physical=compat.physical_rows(self.dataset),
            )
        return self._views

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> RowBatch:
        v = self._arrays()
        n = len(self)
        rows = np.asarray(indices, dtype=np.int64)
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for a split of {n} rows")
        rows = np.where(rows < 0, rows + n, rows)
        if v.physical is not None:
            rows = v.physical[rows]
        if len(rows) and (v.position[rows] < 0).any():
            raise IndexError("a row without pixels (a bad image) was requested")
        pixels = torch.empty((len(rows), *v.shape), dtype=torch.uint8)
        out = pixels.numpy().reshape(len(rows), -1)
        for k, (c, r) in enumerate(zip(v.chunk_of[rows].tolist(), v.position[rows].tolist())):
            out[k] = v.chunks[c][r]
        if v.channels_last:
            pixels = pixels.permute(0, 3, 1, 2)  # N×3×H×W, a view: no copy
        labels = v.labels.multi_hot(rows) if isinstance(v.labels, _LabelSets) else v.labels[rows].astype(np.int64)
        return RowBatch({"pixel_values": pixels, "labels": torch.from_numpy(labels)})


@dataclass
class _RowViews:
    """What FastRows reads a batch from (built once per process, never pickled)."""

    shape: tuple[int, ...]  # of one image: (3, H, W), or (H, W, 3) when channels_last
    channels_last: bool
    chunks: list[np.ndarray]  # per Arrow chunk: (valid rows, pixels per image) uint8, zero-copy
    chunk_of: np.ndarray  # per physical row: its chunk
    position: np.ndarray  # per physical row: its index in that chunk's view, -1 for a bad image
    labels: np.ndarray | _LabelSets  # per physical row: its class, or (multi-label) its classes
    physical: np.ndarray | None  # per logical row: its physical row (None: the same)


@dataclass
class _LabelSets:
    """A multi-label split's classes per physical row, as its Arrow list column holds them: the
    flat class indices and each row's offsets into them (a few bytes per image; a batch's
    multi-hot rows are made when it is read, never a dense matrix of the whole split)."""

    offsets: np.ndarray  # (rows + 1,)
    values: np.ndarray  # class indices
    num_labels: int

    def multi_hot(self, rows: np.ndarray) -> np.ndarray:
        """float32 (len(rows), num_labels): 1.0 where the row has the class."""
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        counts = ends - starts
        out = np.zeros((len(rows), self.num_labels), dtype=np.float32)
        total = int(counts.sum())
        if total:
            owner = np.repeat(np.arange(len(rows)), counts)
            # Position k of the batch's pairs reads values[starts[owner] + (k - first pair of owner)].
            first = np.repeat(np.cumsum(counts) - counts, counts)
            out[owner, self.values[np.repeat(starts, counts) + np.arange(total) - first]] = 1.0
        return out


def _labels(dataset, table) -> np.ndarray | _LabelSets:
    """The ``labels`` of a decoded split's physical rows: class indices, or for a multi-label
    split (a ``Sequence(ClassLabel)`` column) its :class:`_LabelSets`."""
    import pyarrow as pa

    feature = dataset.features["labels"]
    inner = getattr(feature, "feature", None)
    if inner is None:
        return table.column("labels").to_numpy()
    num_labels = getattr(inner, "num_classes", None)
    if num_labels is None:
        raise ValueError("a multi-label split's labels must be a Sequence(ClassLabel) to say how many classes there are")
    chunks = table.column("labels").chunks
    array = pa.concat_arrays(chunks) if len(chunks) != 1 else chunks[0]
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False).astype(np.int64)
    return _LabelSets(offsets, values, int(num_labels))


class RowBatch(list):
    """A batch from :class:`FastRows`: the list of row dicts that any collator accepts (views
    into the batch tensor) plus ``collated``, the batch itself, which :func:`collate` returns
    without stacking the rows again."""

    def __init__(self, collated: dict[str, torch.Tensor]) -> None:
        pixels, labels = collated["pixel_values"], collated["labels"]
        super().__init__({"pixel_values": pixels[i], "labels": labels[i]} for i in range(len(labels)))
        self.collated = collated


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The Trainer's collator: a :class:`RowBatch` as it is, anything else as
    ``transformers.default_data_collator`` collates it."""
    if isinstance(rows, RowBatch):
        return dict(rows.collated)
    from transformers import default_data_collator

    return default_data_collator(rows)


def split_rows(selected, decoded) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``decoded`` (``decode`` of ``selected``): its row in ``selected``, and
    its row in the data set's split that ``selected`` takes rows of (as ``datasets`` numbers
    them), for telling the user which image is meant.

    ``decode`` maps ``selected`` row for row, then sets unreadable images aside with a
    ``select``; ``selected`` is a split as loaded, or a ``select`` of its rows (the recipe's
    sampling), whose table keeps the split's row order.
    """
    logical = compat.physical_rows(decoded)
    logical = np.arange(len(decoded)) if logical is None else logical
    original = compat.physical_rows(selected)
    return logical, (logical if original is None else original[logical])


def image_sources(selected, rows, image_column: str) -> list[str]:
    """Where the images of ``selected``'s ``rows`` came from: a file's path, or
    ``<embedded bytes>`` for an image stored in a data file."""
    from datasets import Image

    from finetune.utils.images import image_source

    picked = selected.select([int(r) for r in rows]).select_columns([image_column])
    if isinstance(picked.features[image_column], Image):
        picked = picked.cast_column(image_column, Image(decode=False))
    return [image_source(v) for v in picked[image_column][:]]
