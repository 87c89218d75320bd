"""Which columns hold the images and the labels, and the labels as classes shared by every split."""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune.data.sources import DataError, looks_like_image_paths
from finetune.recipe import DataConfig

_LABEL_NAMES = ("label", "labels", "class", "target", "category", "fine_label", "coarse_label")


def find_columns(dataset, cfg: DataConfig) -> tuple[str, str]:
    """The image and label columns: named in the recipe, else found from the features."""
    from datasets import ClassLabel, Image, Value

    features = dataset.features
    columns = list(features)

    def check(key: str, value: str | None) -> None:
        if value is not None and value not in features:
            raise DataError(f"data.{key}: no column '{value}' in the data; columns are: {', '.join(columns)}")

    check("image_column", cfg.image_column)
    check("label_column", cfg.label_column)
    image = cfg.image_column
    if image is None:
        found = [c for c, f in features.items() if isinstance(f, Image)]
        if not found:
            found = [
                c
                for c, f in features.items()
                if isinstance(f, Value) and f.dtype in ("string", "large_string") and looks_like_image_paths(dataset[c][:5])
            ]
        if not found:
            raise DataError(
                f"data.image_column: no column holds images or image file paths (columns: {', '.join(columns)}); "
                "check that data.dataset is an image data set, or name its image column in data.image_column"
            )
        if len(found) > 1:
            raise DataError(
                f"data.image_column: cannot tell which column holds the images (several candidates: "
                f"{', '.join(found)}); set data.image_column to one of them"
            )
        image = found[0]
    label = cfg.label_column
    if label is None:
        found = [c for c, f in features.items() if isinstance(f, ClassLabel) and c != image]
        if not found:
            found = [c for c in columns if c.lower() in _LABEL_NAMES and c != image]
        if not found and len(columns) == 2:
            found = [c for c in columns if c != image]  # the only other column
        if len(found) != 1:
            raise DataError(
                f"data.label_column: cannot tell which column holds the labels "
                f"({'several candidates: ' + ', '.join(found) if found else 'no ClassLabel or label-like column'}); "
                f"set data.label_column to one of: {', '.join(c for c in columns if c != image)}"
            )
        label = found[0]
    if label == image:
        raise DataError("data.label_column and data.image_column name the same column; they must differ")
    return image, label


def column(dataset, name: str) -> list[Any]:
    """All values of one column as a list. ``dataset[name]`` is a lazy column in datasets 5,
    and ``np.asarray`` of it reads row by row, far slower than the slice on a large split."""
    return dataset[name][:]


def encode_labels(train, others: dict[str, Any], label: str):
    """Make ``label`` a ClassLabel in train, and map every other split onto the same classes.

    Returns (train, others, class names). Fails when a class has no images or when another
    split holds classes that train does not (the model could never predict them).
    """
    from datasets import ClassLabel

    feature = train.features[label]
    if not isinstance(feature, ClassLabel):
        train = train.class_encode_column(label)
        feature = train.features[label]
    names: list[str] = list(feature.names)
    counts = np.bincount(np.asarray(column(train, label), dtype=np.int64), minlength=len(names))
    if len(names) < 2 or (counts > 0).sum() < 2:
        raise DataError(
            f"data.label_column: '{label}' has {int((counts > 0).sum())} class in the training split; "
            "classification needs at least 2"
        )
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"data: class(es) {', '.join(empty)} have no training images; add images or remove the class"
        )
    out = {}
    for split, ds in others.items():
        theirs = ds.features[label]
        if isinstance(theirs, ClassLabel):
            if list(theirs.names) == names:
                out[split] = ds
                continue
            values = {theirs.names[i] for i in set(column(ds, label))}
        else:
            values = {str(v) for v in set(column(ds, label))}
        unknown = sorted(values - set(names))
        if unknown:
            raise DataError(
                f"data: split '{split}' has classes that train does not: {', '.join(unknown[:10])}"
                f"{' …' if len(unknown) > 10 else ''}; fix the labels or drop those images"
            )
        if isinstance(theirs, ClassLabel):
            ds = ds.align_labels_with_mapping({n: i for i, n in enumerate(names)}, label)
        else:
            ds = ds.map(lambda row: {label: str(row[label])}).cast_column(label, ClassLabel(names=names))
        out[split] = ds
    return train, out, names


def map_to_model_classes(dataset, label_column: str, class_names: list[str], where: str):
    """``dataset`` with ``label_column`` a ClassLabel of the model's classes, in its order."""
    from datasets import ClassLabel, Dataset, Features

    from finetune.data import encode_labels

    feature = dataset.features[label_column]
    used = set(dataset[label_column])
    if None in used or (isinstance(feature, ClassLabel) and -1 in used):
        raise DataError(
            f"{where} has unlabelled images (label {'-1' if -1 in used else 'missing'}); scoring needs the true "
            "labels: name a labelled split, or use `finetune predict` to label the images"
        )
    if isinstance(feature, ClassLabel):
        values = {feature.names[i] for i in used if i is not None and i >= 0}
    else:
        values = {str(v) for v in used}
    unknown = sorted(values - set(class_names))
    if unknown:
        shown = ", ".join(unknown[:10]) + (" …" if len(unknown) > 10 else "")
        known = ", ".join(class_names[:10]) + (" …" if len(class_names) > 10 else "")
        raise DataError(
            f"{where} has {len(unknown)} class(es) that the model does not know: {shown}; "
            f"the model was trained on: {known}; evaluate on images of those classes only"
        )
    # encode_labels maps every other split onto the classes of a reference split: here a
    # one-row-per-class stand-in carrying the model's own classes.
    reference = Dataset.from_dict(
        {label_column: list(range(len(class_names)))},
        features=Features({label_column: ClassLabel(names=class_names)}),
    )
    _, mapped, _ = encode_labels(reference, {"eval": dataset}, label_column)
    return mapped["eval"]
