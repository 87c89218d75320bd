"""The images ``finetune inspect`` looks at, grouped as training uses them: the training split, the eval split and each eval set, every image with the split and row it has in the user's data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from finetune import data
from finetune.evaluation.plots import as_hwc

#: The roles a part plays in training.
TRAINING, EVAL, EVAL_SET = "training", "eval", "eval set"
#: Why the label check is skipped for multi-label data (the log and the report say it).
MULTI_LABEL_NOTE = (
    "the label check (likely label errors) is single-label: it looks for the one class an image most likely is, "
    "which an image of several classes (or none) does not have, so it was skipped for this multi-label data; "
    "duplicates, leakage, outliers and class balance are checked as usual"
)


@dataclass
class Piece:
    """One decoded split (``decoded``) and the rows it came from: ``selected``, the rows of
    the data set's split ``split`` that the recipe takes (undecoded), with ``image_column``."""

    split: str
    decoded: Any
    selected: Any
    image_column: str

    _fast: Any = None

    def fast_rows(self) -> data.FastRows:
        """The decoded split's rows for reading pixels (made once)."""
        if self._fast is None:
            self._fast = data.FastRows(self.decoded)
        return self._fast

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """For each decoded row: its row in ``selected``, and in the data set's split."""
        return data.split_rows(self.selected, self.decoded)


@dataclass
class Part:
    """The images of one role (training, eval, an eval set): one or more decoded pieces,
    concatenated; what the analyses add to it (features, signatures) is in row order."""

    name: str  # as the report names it: "train", "test", "eval set night"
    role: str
    pieces: list[Piece]
    class_names: list[str]
    #: Each image has a set of classes (a multi-label run's data), not one.
    multi_label: bool = False
    features: torch.Tensor | None = None  # the backbone's, one row per image
    hashes: list[bytes] = field(default_factory=list)
    thumbnails: torch.Tensor | None = None
    _labels: np.ndarray | None = None
    _index: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return sum(len(p.decoded) for p in self.pieces)

    @property
    def labels(self) -> np.ndarray:
        """The given label of every image: class indices of ``class_names``, or for multi-label
        data multi-hot rows (images × classes, float32)."""
        if self._labels is None and self.multi_label:
            out = np.zeros((len(self), len(self.class_names)), dtype=np.float32)
            start = 0
            for p in self.pieces:
                rows, classes = data.label_pairs(p.decoded, "labels")
                out[start + rows, classes] = 1.0
                start += len(p.decoded)
            self._labels = out
        if self._labels is None:
            parts = [np.asarray(data.column(p.decoded, "labels")) for p in self.pieces]
            self._labels = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return self._labels

    def label_text(self, i: int) -> str:
        """Image ``i``'s given label as text: its class, or its classes joined by ";"."""
        if self.multi_label:
            return ";".join(self.class_names[c] for c in np.flatnonzero(self.labels[i]))
        return self.class_names[int(self.labels[i])]

    def same_label(self, i: int, other: Part, j: int) -> bool:
        """Whether image ``i`` and image ``j`` of ``other`` have the same given label (set)."""
        return bool(np.array_equal(self.labels[i], other.labels[j]))

    def class_counts(self) -> np.ndarray:
        """Images of each class (an image counts for each of its classes)."""
        if self.multi_label:
            return self.labels.sum(axis=0).astype(np.int64) if len(self) else np.zeros(len(self.class_names), np.int64)
        return np.bincount(self.labels, minlength=len(self.class_names))

    def _where(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per image: its piece, its row in that piece's decoded split, in its selected rows,
        and in the data set's split."""
        if self._index is None:
            piece, local, logical, original = [], [], [], []
            for k, p in enumerate(self.pieces):
                sel, orig = p.rows()
                piece.append(np.full(len(sel), k))
                local.append(np.arange(len(sel)))
                logical.append(sel)
                original.append(orig)
            cat = (lambda xs: np.concatenate(xs).astype(np.int64)) if piece else (lambda xs: np.zeros(0, np.int64))
            self._index = (cat(piece), cat(local), cat(logical), cat(original))
        return self._index

    def split_of(self, i: int) -> str:
        """The data set's split that image ``i`` is in."""
        return self.pieces[int(self._where()[0][i])].split

    def row_of(self, i: int) -> int:
        """Image ``i``'s row in its data set split (as ``datasets`` numbers it)."""
        return int(self._where()[3][i])

    def sources_of(self, images) -> list[str]:
        """Where each of ``images`` came from: its file's path, or ``<embedded bytes>`` (one
        read of the undecoded rows per piece)."""
        piece, _, logical, _ = self._where()
        images = np.asarray(images, dtype=np.int64)
        out = [""] * len(images)
        for k, p in enumerate(self.pieces):
            mine = np.flatnonzero(piece[images] == k)
            if len(mine):
                for slot, source in zip(mine, data.image_sources(p.selected, logical[images[mine]], p.image_column)):
                    out[slot] = source
        return out

    def pixels_of(self, i: int) -> np.ndarray:
        """Image ``i`` as the model gets it (decoded, before normalisation), H×W×3 uint8."""
        piece, local, _, _ = self._where()
        batch = self.pieces[int(piece[i])].fast_rows().__getitems__([int(local[i])])
        return as_hwc(batch.collated["pixel_values"][0])

    def describe(self, images) -> list[dict[str, Any]]:
        """The identity of each of ``images`` for the report's files: split, row and source."""
        sources = self.sources_of(images)
        return [{"split": self.split_of(i), "row": self.row_of(i), "source": src} for i, src in zip(images, sources)]


def build_parts(prepared: Any, cfg: Any, eval_sets: dict[str, Any], raw_sets: dict[str, Any]) -> list[Part]:
    """The training, eval and eval-set parts of a recipe's prepared data (training's
    ``prepare_data``): the training split's train and validation pieces together, unless the
    validation piece is what gets reported (``data.eval_split`` null), which makes it the eval
    part. ``cfg``: the recipe's ``data`` section; ``raw_sets``: each eval set's undecoded
    split and its image column, for the files' paths."""
    s = prepared.splits
    names = s.class_names
    multi = bool(getattr(s, "multi_label", False))
    train = Piece(cfg.train_split, prepared.train, s.train, s.image_column)
    parts = []
    eval_is_validation = prepared.eval is not None and prepared.eval is prepared.validation
    pieces = [train]
    if prepared.validation is not None and not eval_is_validation:
        pieces.append(Piece(train.split, prepared.validation, s.validation, s.image_column))
    parts.append(Part(train.split, TRAINING, pieces, names, multi))
    if prepared.eval is not None:
        selected = s.validation if eval_is_validation else s.eval
        split = train.split if eval_is_validation else str(cfg.eval_split)
        label = f"{split} (validation piece)" if eval_is_validation else split
        parts.append(Part(label, EVAL, [Piece(split, prepared.eval, selected, s.image_column)], names, multi))
    for name, evaluation in eval_sets.items():
        raw, image_column = raw_sets[name]
        parts.append(
            Part(f"eval set {name}", EVAL_SET, [Piece(f"{evaluation.cfg.split} of {evaluation.cfg.dataset}", evaluation.images, raw, image_column)],
                 names, multi)
        )
    return parts

