"""Train, a validation piece of it and the eval split, stratified and seeded: pure functions of labels and seed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finetune.data import stratify
from finetune.data.columns import (
    column,
    encode_label_sets,
    encode_labels,
    find_columns,
    is_multi_label_column,
    label_pairs,
)
from finetune.data.sources import DataError
from finetune.recipe import DataConfig
from finetune.recipe.task import multi_label_refusals


def _per_class(labels: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Indices of each class, each list shuffled by ``rng`` (classes in sorted order)."""
    return {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}


def stratified_sample(labels: np.ndarray, n: int, seed: int, keep: int = 0) -> np.ndarray:
    """``n`` indices whose class shares follow those of ``labels`` (largest remainder),
    leaving at least ``keep`` images of every class out of the sample.

    The first round is plain largest remainder over every class (so a sample that no cap
    touches is the one it always was); a class capped by ``keep`` gives what it cannot take
    to the classes with room, again in proportion to their sizes. The sample is as close to
    ``n`` as the caps allow.
    """
    rng = np.random.default_rng(seed)
    groups = _per_class(labels, rng)
    room = {c: max(len(idx) - keep, 0) for c, idx in groups.items()}
    take = {c: 0 for c in groups}
    remaining = min(n, len(labels), sum(room.values()))
    open_classes = list(groups)
    while remaining > 0:
        # Each round hands out every remaining slot and closes the classes that are full.
        # Slots never exceed the open classes' room, so after the first round some open
        # class gets one every round.
        size = sum(len(groups[c]) for c in open_classes)
        exact = {c: remaining * len(groups[c]) / size for c in open_classes}
        share = {c: int(np.floor(v)) for c, v in exact.items()}
        for c in sorted(exact, key=lambda c: (share[c] - exact[c], c))[: remaining - sum(share.values())]:
            share[c] += 1
        for c in open_classes:
            got = min(share[c], room[c] - take[c])
            take[c] += got
            remaining -= got
        open_classes = [c for c in open_classes if take[c] < room[c]]
    return np.sort(np.concatenate([groups[c][: take[c]] for c in groups]).astype(np.int64))


def balanced_sample(labels: np.ndarray, n: int | None, seed: int, per_class: int | None = None) -> np.ndarray:
    """Class-balanced indices: ``per_class`` of each class (k-shot), or ``n`` in total spread
    as evenly as the classes allow (a class with too few images gives its share to others)."""
    rng = np.random.default_rng(seed)
    groups = _per_class(labels, rng)
    if per_class is not None:
        take = {c: min(per_class, len(idx)) for c, idx in groups.items()}
    else:
        assert n is not None
        take = {c: 0 for c in groups}
        remaining = min(n, len(labels))
        open_classes = [c for c in groups]
        while remaining > 0 and open_classes:
            share, extra = divmod(remaining, len(open_classes))
            order = rng.permutation(len(open_classes))
            for rank, i in enumerate(order):
                c = open_classes[i]
                want = share + (1 if rank < extra else 0)
                got = min(want, len(groups[c]) - take[c])
                take[c] += got
                remaining -= got
            open_classes = [c for c in open_classes if take[c] < len(groups[c])]
    return np.sort(np.concatenate([groups[c][: take[c]] for c in groups]).astype(np.int64))


def _listed(names: list[str], limit: int = 10) -> str:
    """At most ``limit`` names, then how many more."""
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")


@dataclass
class Splits:
    train: Any
    validation: Any | None
    eval: Any
    #: Where the reported numbers come from, for the card: e.g. "test" or "validation piece of train".
    eval_name: str
    class_names: list[str]
    image_column: str
    label_column: str
    notes: list[str] = field(default_factory=list)
    #: The label column holds a set of classes per image (``Sequence(ClassLabel)`` in every
    #: split; :mod:`finetune.data.multi_label`).
    multi_label: bool = False


def make_splits(raw, cfg: DataConfig, seed: int) -> Splits:
    """Train / validation piece / eval split, seeded and stratified: the validation piece of
    train gives per-epoch scores and model selection, the eval split is reported once at the
    end (the validation piece itself when ``data.eval_split`` is null)."""
    available = list(raw)
    if cfg.train_split not in raw:
        raise DataError(
            f"data.train_split: '{cfg.train_split}' is not a split of '{cfg.dataset}'; it has: {', '.join(available)}"
        )
    if cfg.eval_split is not None and cfg.eval_split not in raw:
        raise DataError(
            f"data.eval_split: '{cfg.eval_split}' is not a split of '{cfg.dataset}' (it has: {', '.join(available)}); "
            "name one of those, or set data.eval_split to null to report on a held-out validation piece of train"
        )
    if cfg.eval_split == cfg.train_split:
        raise DataError(
            "data.eval_split names the training split: the reported score would be measured on training images; "
            "name another split, or set it to null to hold out a validation piece"
        )
    train = raw[cfg.train_split]
    image, label = find_columns(train, cfg)
    others = {cfg.eval_split: raw[cfg.eval_split]} if cfg.eval_split else {}
    for split, ds in others.items():
        missing = [c for c in (image, label) if c not in ds.column_names]
        if missing:
            raise DataError(f"data: split '{split}' lacks column(s) {', '.join(missing)} that train has")
    multi = is_multi_label_column([train, *others.values()], label, cfg)
    if multi:
        refused = multi_label_refusals(cfg)
        if refused:
            raise DataError(f"data: '{label}' holds several classes per image (multi-label data), and {refused[0]}")
        return _multi_label_splits(train, others, cfg, seed, image, label)
    train, others, names = encode_labels(train, others, label)
    notes: list[str] = []

    labels = np.asarray(column(train, label), dtype=np.int64)
    all_idx = np.arange(len(labels))
    if cfg.samples_per_class is not None or cfg.max_train_samples is not None:
        if cfg.max_train_samples is not None and cfg.max_train_samples < len(names):
            raise DataError(
                f"data.max_train_samples: {cfg.max_train_samples} is fewer than the {len(names)} classes, so some "
                f"would have no training image; raise it to at least {len(names)} or set it to null"
            )
        chosen = balanced_sample(labels, cfg.max_train_samples, seed, per_class=cfg.samples_per_class)
        short = [
            names[c]
            for c in np.unique(labels)
            if cfg.samples_per_class is not None and (labels == c).sum() < cfg.samples_per_class
        ]
        if short:
            notes.append(f"fewer than {cfg.samples_per_class} images in class(es): {', '.join(short)}; all were used")
        rest = np.setdiff1d(all_idx, chosen)
        n_val = int(round(cfg.validation_fraction * len(chosen)))
        val_idx = rest[stratified_sample(labels[rest], n_val, seed + 1)] if n_val and len(rest) else rest[:0]
        train_idx = chosen
        if cfg.validation_fraction > 0 and len(val_idx) == 0:
            raise DataError(
                "data.validation_fraction: no images are left for the validation piece; lower max_train_samples / "
                "samples_per_class, or set data.validation_fraction to 0"
            )
    else:
        # Every class keeps at least one training image: a class of n images gives at most
        # n - 1 to the validation piece, and the others make up what it cannot give.
        n_val = int(round(cfg.validation_fraction * len(labels)))
        val_idx = stratified_sample(labels, n_val, seed + 1, keep=1) if n_val else all_idx[:0]
        train_idx = np.setdiff1d(all_idx, val_idx)
        if cfg.validation_fraction > 0 and len(val_idx) == 0:
            why = "leaves none" if n_val == 0 else "cannot be set aside: every class has a single image, which training needs"
            raise DataError(
                f"data.validation_fraction: {cfg.validation_fraction:g} of {len(labels)} training images {why}; add "
                f"images, or set data.validation_fraction to 0{' and name a data.eval_split' if cfg.eval_split is None else ''}"
            )
    if len(val_idx):
        missing = sorted(set(range(len(names))) - set(labels[val_idx].tolist()))
        if missing:
            notes.append(
                f"class(es) {_listed([names[c] for c in missing])} have no validation images (too few images to spare "
                "one from training); the validation scores leave them out"
            )
    validation = train.select(val_idx) if len(val_idx) else None
    train = train.select(train_idx)

    if cfg.eval_split is not None:
        evaluation = others[cfg.eval_split]
        eval_name = cfg.eval_split
        if cfg.max_eval_samples is not None:
            eval_labels = np.asarray(column(evaluation, label), dtype=np.int64)
            evaluation = evaluation.select(balanced_sample(eval_labels, cfg.max_eval_samples, seed + 2))
            eval_name = f"{cfg.eval_split} (class-balanced subset of {len(evaluation)})"
    else:
        # Nothing else to report on: the validation piece is reported, and the card says so.
        evaluation = validation
        eval_name = f"validation piece of '{cfg.train_split}' ({cfg.validation_fraction:g}, seeded, stratified)"
        if cfg.max_eval_samples is not None and len(evaluation) > cfg.max_eval_samples:
            evaluation = evaluation.select(
                balanced_sample(np.asarray(column(evaluation, label)), cfg.max_eval_samples, seed + 2)
            )
    return Splits(train, validation, evaluation, eval_name, names, image, label, notes)


def _pairs_of(rows: np.ndarray, classes: np.ndarray, subset: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The (image, class) pairs of the images ``subset`` (of ``n``), numbered by their place in it."""
    place = np.full(n, -1, dtype=np.int64)
    place[subset] = np.arange(len(subset))
    mine = place[rows] >= 0
    return place[rows[mine]], classes[mine]


def _multi_label_splits(train, others: dict[str, Any], cfg: DataConfig, seed: int, image: str, label: str) -> Splits:
    """:func:`make_splits` of multi-label data: the validation piece by iterative stratification
    (:mod:`finetune.data.stratify`), ``max_train_samples`` / ``max_eval_samples`` as seeded
    subsets that keep every class they can; the same seeds as single-label data."""
    train, others, names = encode_label_sets(train, others, label, cfg.label_separator)
    notes: list[str] = []
    n, num = len(train), len(names)
    rows, classes = label_pairs(train, label)
    all_idx = np.arange(n)
    if cfg.max_train_samples is not None:
        chosen = stratify.covering_sample(rows, classes, n, num, cfg.max_train_samples, seed)
        held = np.unique(_pairs_of(rows, classes, chosen, n)[1])
        lacking = [names[c] for c in sorted(set(range(num)) - set(held.tolist()))]
        if lacking:
            raise DataError(
                f"data.max_train_samples: {cfg.max_train_samples} images cannot hold every class (class(es) "
                f"{_listed(lacking)} would have no training image); raise it or set it to null"
            )
        rest = np.setdiff1d(all_idx, chosen)
        n_val = int(round(cfg.validation_fraction * len(chosen)))
        if n_val and len(rest):
            sub_rows, sub_classes = _pairs_of(rows, classes, rest, n)
            val_idx = rest[stratify.validation_piece(sub_rows, sub_classes, len(rest), num, n_val, seed + 1, keep=False)]
        else:
            val_idx = rest[:0]
        train_idx = chosen
        if cfg.validation_fraction > 0 and len(val_idx) == 0:
            raise DataError(
                "data.validation_fraction: no images are left for the validation piece; lower max_train_samples, "
                "or set data.validation_fraction to 0"
            )
    else:
        # Every class keeps a training image, and every class of 2 or more images has one in
        # each piece where the piece's size allows (stratify.validation_piece).
        n_val = int(round(cfg.validation_fraction * n))
        val_idx = stratify.validation_piece(rows, classes, n, num, n_val, seed + 1) if n_val else all_idx[:0]
        train_idx = np.setdiff1d(all_idx, val_idx)
        if cfg.validation_fraction > 0 and len(val_idx) == 0:
            why = "leaves none" if n_val == 0 else "cannot be set aside: each image is the only one of one of its classes"
            raise DataError(
                f"data.validation_fraction: {cfg.validation_fraction:g} of {n} training images {why}; add images, or "
                f"set data.validation_fraction to 0{' and name a data.eval_split' if cfg.eval_split is None else ''}"
            )
    if len(val_idx):
        present = set(_pairs_of(rows, classes, val_idx, n)[1].tolist())
        missing = [names[c] for c in range(num) if c not in present]
        if missing:
            notes.append(
                f"class(es) {_listed(missing)} have no validation images (a class needs an image in each piece, and "
                f"the piece holds {len(val_idx)}); the validation scores leave them out and their decision thresholds "
                "stay at the default"
            )
    validation = train.select(val_idx) if len(val_idx) else None
    train = train.select(train_idx)
    if cfg.eval_split is not None:
        evaluation, eval_name = others[cfg.eval_split], cfg.eval_split
        subset_of = cfg.eval_split
    else:
        evaluation = validation
        eval_name = f"validation piece of '{cfg.train_split}' ({cfg.validation_fraction:g}, seeded, iteratively stratified)"
        subset_of = None
    if cfg.max_eval_samples is not None and len(evaluation) > cfg.max_eval_samples:
        e_rows, e_classes = label_pairs(evaluation, label)
        evaluation = evaluation.select(
            stratify.covering_sample(e_rows, e_classes, len(evaluation), num, cfg.max_eval_samples, seed + 2)
        )
        if subset_of is not None:
            eval_name = f"{subset_of} (seeded subset of {len(evaluation)} keeping every class it can)"
    return Splits(train, validation, evaluation, eval_name, names, image, label, notes, multi_label=True)


def empty_class_reason(splits: Splits, kept_labels) -> str | None:
    """The one-line error when a class has no training image left after unreadable files were
    set aside (``kept_labels``: the labels of the decoded train piece; of multi-label data,
    the class of each of its (image, class) pairs), naming the real cause; None when every
    class has one."""
    n = len(splits.class_names)
    kept = np.bincount(np.asarray(kept_labels, dtype=np.int64), minlength=n)
    given = (
        label_pairs(splits.train, splits.label_column)[1]
        if splits.multi_label
        else np.asarray(column(splits.train, splits.label_column), dtype=np.int64)
    )
    split = np.bincount(given, minlength=n)
    lost = [
        f"{splits.class_names[c]} ({split[c]} image{'s' if split[c] != 1 else ''})"
        for c in np.flatnonzero((kept == 0) & (split > 0))
    ]
    if lost:
        return (
            f"data: every training image of class(es) {_listed(lost)} is unreadable; fix or replace those files "
            "(each is listed with its reason in data_report.json) or remove the class"
        )
    absent = [splits.class_names[c] for c in np.flatnonzero(split == 0)]
    if absent:
        return f"data: class(es) {_listed(absent)} have no training images; add images or remove the class"
    return None
