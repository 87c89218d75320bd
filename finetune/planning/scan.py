"""What a data set holds, found without decoding its images: splits, classes and their counts, image sizes from a sample of headers, unreadable and junk files."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finetune import data
from finetune.recipe import DataConfig

#: Split names taken as the held-out split to report on, in order of preference.
EVAL_SPLIT_NAMES = ("test", "validation", "valid", "val", "eval", "evaluation")
#: Up to this many images every header is read (a fraction of a millisecond each); above it,
#: an even sample of this many, and the unreadable share is estimated from it.
HEADER_SCAN = 20_000


@dataclass
class Scan:
    """What ``finetune new`` found in the data, and prints."""

    dataset: str
    splits: dict[str, int]
    train_split: str
    eval_split: str | None
    image_column: str
    label_column: str
    class_names: list[str]
    #: Training images per class (multi-label: images holding the class).
    counts: list[int]
    multi_label: bool
    #: (height, width) of the images whose headers were read.
    sizes: list[tuple[int, int]]
    headers_read: int
    #: Unreadable images among those whose headers were read: (path, reason).
    bad: list[tuple[str, str]] = field(default_factory=list)
    junk_files: int = 0
    #: Mean labels per training image (1 for single-label data).
    labels_per_image: float = 1.0
    #: Training images without any label (multi-label data only).
    unlabelled: int = 0
    #: The training split as loaded (images undecoded), for the decode cost's sample: the
    #: data set is read once.
    train: Any = field(default=None, repr=False)

    @property
    def num_train(self) -> int:
        return self.splits[self.train_split]

    @property
    def per_class(self) -> float:
        """The median training images per class: what the strategy is chosen from."""
        return float(statistics.median(self.counts)) if self.counts else 0.0

    @property
    def imbalance(self) -> float:
        """The most frequent class's training images over the rarest's."""
        positive = [c for c in self.counts if c > 0]
        return max(positive) / min(positive) if positive else 1.0

    @property
    def median_side(self) -> int:
        """The median of the images' shorter sides (0 when no header could be read)."""
        return int(statistics.median(min(h, w) for h, w in self.sizes)) if self.sizes else 0

    def lines(self) -> list[str]:
        """The scan as the command prints it."""
        split_text = ", ".join(f"{name} {n:,}" for name, n in self.splits.items())
        order = np.argsort(self.counts)
        rare = ", ".join(f"{self.class_names[i]} {self.counts[i]}" for i in order[:3])
        common = ", ".join(f"{self.class_names[i]} {self.counts[i]}" for i in order[::-1][:3])
        out = [
            f"data: {self.dataset}: splits {split_text}; training split '{self.train_split}'"
            + (f", held-out split '{self.eval_split}'" if self.eval_split else ", no held-out split"),
            f"labels: {'multi-label' if self.multi_label else 'single-label'}, {len(self.class_names)} classes in "
            f"column '{self.label_column}' (images in '{self.image_column}')"
            + (f"; {self.labels_per_image:.2f} labels per image, {self.unlabelled} image(s) without one"
               if self.multi_label else ""),
            f"per class: median {self.per_class:g} training images; fewest: {rare}; most: {common}"
            + (f" (imbalance {self.imbalance:.1f}×)" if self.imbalance > 1 else ""),
        ]
        if self.sizes:
            heights = [h for h, _ in self.sizes]
            widths = [w for _, w in self.sizes]
            out.append(
                f"images: {self.headers_read:,} header(s) read; height {min(heights)}-{max(heights)} px, width "
                f"{min(widths)}-{max(widths)} px, median shorter side {self.median_side} px"
            )
        out.append(
            f"files: {len(self.bad)} unreadable of {self.headers_read:,} read"
            + (f" (e.g. {self.bad[0][0]}: {self.bad[0][1]})" if self.bad else "")
            + f"; {self.junk_files} junk file(s) that training skips"
        )
        return out


def scan(dataset: str, train_split: str = "train") -> Scan:
    """Scan ``dataset`` (anything ``data.dataset`` accepts). Labels are read from their column;
    images only from their headers."""
    raw = data.load_raw(DataConfig(dataset=dataset, train_split=train_split))
    if train_split not in raw:
        raise data.DataError(
            f"{dataset}: no '{train_split}' split (it has: {', '.join(raw)}); put the training images in a "
            f"'{train_split}' folder, or pass --train-split"
        )
    splits = {name: len(ds) for name, ds in raw.items()}
    eval_split = next((n for n in EVAL_SPLIT_NAMES if n in raw and n != train_split), None)
    train = raw[train_split]
    image_column, label_column = data.find_columns(train, DataConfig(dataset=dataset))
    others = [ds for name, ds in raw.items() if name != train_split]
    names, counts, multi, per_image, unlabelled = _labels(train, label_column, others)
    sizes, read, bad = _headers(train, image_column)
    junk = data.count_junk(dataset)
    return Scan(
        dataset=dataset, splits=splits, train_split=train_split, eval_split=eval_split, image_column=image_column,
        label_column=label_column, class_names=names, counts=counts, multi_label=multi, sizes=sizes,
        headers_read=read, bad=bad, junk_files=junk, labels_per_image=per_image, unlabelled=unlabelled, train=train,
    )


def _labels(train, label_column: str, others: list[Any]) -> tuple[list[str], list[int], bool, float, int]:
    """Class names, training images per class, whether the labels are multi-label (as a run
    decides it: :func:`finetune.data.columns.is_multi_label_column`), the mean labels per image
    and the images without a label."""
    from finetune.data.columns import encode_label_sets, is_multi_label_column, label_summary

    cfg = DataConfig()
    if is_multi_label_column([train, *others], label_column, cfg):
        encoded, _, names = encode_label_sets(train, {}, label_column, cfg.label_separator)
        summary = label_summary(encoded, label_column, names)
        counts = [summary["images_per_label"][n] for n in names]
        return names, counts, True, summary["labels_per_image"], summary["images_without_label"]
    encoded, _, names = data.encode_labels(train, {}, label_column)
    counts = np.bincount(np.asarray(data.column(encoded, label_column), dtype=np.int64), minlength=len(names))
    return names, counts.tolist(), False, 1.0, 0


def _headers(train, image_column: str) -> tuple[list[tuple[int, int]], int, list[tuple[str, str]]]:
    """(height, width) of the images read, how many were read, and the unreadable ones."""
    from finetune.utils.images import image_source, upright_size

    n = len(train)
    rows = range(n) if n <= HEADER_SCAN else sorted({int(i) for i in np.linspace(0, n - 1, HEADER_SCAN)})
    column = train.select(list(rows)).select_columns([image_column]).cast_column(image_column, _undecoded(train, image_column))
    sizes: list[tuple[int, int]] = []
    bad: list[tuple[str, str]] = []
    for value in column[image_column]:
        try:
            sizes.append(upright_size(value))
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not fatal
            bad.append((image_source(value), f"{type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}"))
    return sizes, len(rows), bad


def _undecoded(train, image_column: str) -> Any:
    """The image column's feature with decoding off: headers are read from the bytes or path."""
    from datasets import Image

    feature = train.features[image_column]
    return Image(decode=False) if isinstance(feature, Image) else feature
