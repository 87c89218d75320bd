"""Which columns hold the images and the labels, whether the labels are one class or a set of classes per image, and the labels as classes shared by every split.

Single-label: the label column becomes a ``ClassLabel``. Multi-label (``data.task``, or found:
a list feature, or text in which some value holds ``data.label_separator``): it becomes
``Sequence(ClassLabel(names))`` in every split, each image's classes sorted and unique, an
image with none an empty list (all negatives).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune.data.sources import DataError, looks_like_image_paths
from finetune.recipe import DataConfig

LABEL_NAMES = ("label", "labels", "class", "target", "category", "fine_label", "coarse_label")


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
            found = [c for c in columns if c.lower() in LABEL_NAMES and c != image]
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
    _check_counts(np.bincount(np.asarray(column(train, label), dtype=np.int64), minlength=len(names)), names, label)
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


def _check_counts(counts: np.ndarray, names: list[str], label: str) -> None:
    """Training images per class: at least 2 classes with images, and none without any."""
    if len(names) < 2 or (counts > 0).sum() < 2:
        raise DataError(
            f"data.label_column: '{label}' has {int((counts > 0).sum())} class in the training split; "
            "classification needs at least 2"
        )
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"data: class(es) {', '.join(empty)} have no training images; add images or remove the class")


def map_to_model_classes(
    dataset, label_column: str, class_names: list[str], where: str, multi_label: bool | None = None, separator: str = ";"
):
    """``dataset`` with ``label_column`` in the model's classes, in its order: a ClassLabel, or
    for a multi-label model (``multi_label``; None: as ``data.task: "auto"`` finds it in the
    data) a ``Sequence(ClassLabel)``, a single class per image then being a set of one."""
    from datasets import ClassLabel, Dataset, Features

    from finetune.data import encode_labels

    if multi_label is None:
        multi_label = is_multi_label_column([dataset], label_column, DataConfig(label_separator=separator))
    feature = dataset.features[label_column]
    if is_list_feature(feature) and not multi_label:
        raise DataError(
            f"{where} holds several classes per image, but the model is single-label (one class per image); "
            "score it with a multi-label model, or give each image one class"
        )
    used = set() if multi_label and not isinstance(feature, ClassLabel) else set(column(dataset, label_column))
    if None in used or (isinstance(feature, ClassLabel) and -1 in used):
        raise DataError(
            f"{where} has unlabelled images (label {'-1' if -1 in used else 'missing'}); scoring needs the true "
            "labels: name a labelled split, or use `finetune predict` to label the images"
        )
    if multi_label:
        sets, _ = _raw_sets(dataset, label_column, separator)
        if sets and not any(sets):
            raise DataError(
                f"{where} has no labels at all; scoring needs the true labels: name a labelled split, or use "
                "`finetune predict` to label the images"
            )
        values = {str(v) for vs in sets for v in vs}
    elif isinstance(feature, ClassLabel):
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
    if multi_label:
        return _cast_sets(dataset, label_column, sets, class_names, "eval")
    # encode_labels maps every other split onto the classes of a reference split: here a
    # one-row-per-class stand-in carrying the model's own classes.
    reference = Dataset.from_dict(
        {label_column: list(range(len(class_names)))},
        features=Features({label_column: ClassLabel(names=class_names)}),
    )
    _, mapped, _ = encode_labels(reference, {"eval": dataset}, label_column)
    return mapped["eval"]


# ------------------------------------------------------------------------------ multi-label


def is_list_feature(feature) -> bool:
    """Whether a ``datasets`` feature is a list (``Sequence``, ``List``, ``LargeList``)."""
    from datasets import LargeList, List

    return isinstance(feature, (List, LargeList)) or isinstance(feature, (list, tuple))


def _is_text(feature) -> bool:
    from datasets import Value

    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def is_multi_label_column(splits: list[Any], label: str, cfg: DataConfig) -> bool:
    """Whether ``label`` holds a set of classes per image, in these splits (train first):
    ``data.task`` when it says so, else a list feature (``Sequence(ClassLabel)``, a JSON-lines
    list), or text in which some value of some split holds ``data.label_separator``. Raises a
    one-line DataError where the task and the column disagree."""
    from datasets import ClassLabel

    feature = splits[0].features[label]
    if is_list_feature(feature):
        if cfg.task == "single_label":
            raise DataError(
                f"data.task: 'single_label', but '{label}' holds a list of classes for each image; set data.task to "
                "'multi_label' or 'auto' (or name a column of one class per image in data.label_column)"
            )
        return True
    if cfg.task == "multi_label" and not _is_text(feature):
        builder = getattr(getattr(splits[0], "info", None), "builder_name", None)
        why = (
            "an image folder gives each image the one class of its sub-folder"
            if builder == "imagefolder"
            else f"its {'ClassLabel' if isinstance(feature, ClassLabel) else feature.dtype} values are one class per image"
        )
        raise DataError(
            f"data.task: 'multi_label', but '{label}' cannot hold several classes per image ({why}); list the images "
            f"with their classes in a CSV or JSON-lines file (e.g. image,labels with 'cat{cfg.label_separator}dog', "
            "or a JSON list), or set data.task to 'auto' or 'single_label'"
        )
    if cfg.task != "auto" or not _is_text(feature):
        return cfg.task == "multi_label"
    sep = cfg.label_separator
    return any(isinstance(v, str) and sep in v for ds in splits if label in ds.column_names for v in column(ds, label))


def _names_of(values: list[list[Any]]) -> list[str]:
    """Class names from raw label values: sorted as the values (numbers as numbers), as
    ``class_encode_column`` sorts them for single-label data."""
    found = {v for vs in values for v in vs}
    try:
        return [str(v) for v in sorted(found)]
    except TypeError:  # values of several types
        return sorted({str(v) for v in found})


def _raw_sets(ds, label: str, separator: str) -> tuple[list[list[Any]], list[str] | None]:
    """Each image's classes as raw values (text split on ``separator``, blanks stripped, empty
    items dropped; a missing value: none), and the declared class names of a
    ``Sequence(ClassLabel)`` (None otherwise)."""
    from datasets import ClassLabel

    feature = ds.features[label]
    values = column(ds, label)
    if is_list_feature(feature):
        inner = feature.feature if hasattr(feature, "feature") else feature[0]
        if isinstance(inner, ClassLabel):
            return [[inner.names[i] for i in v] if v else [] for v in values], list(inner.names)
        return [[x.strip() if isinstance(x, str) else x for x in v if not (isinstance(x, str) and not x.strip())]
                if v else [] for v in values], None
    if isinstance(feature, ClassLabel):  # a split of one class per image scored as sets
        return [[feature.names[v]] if v is not None and v >= 0 else [] for v in values], list(feature.names)
    return [[x.strip() for x in str(v).split(separator) if x.strip()] if v is not None else [] for v in values], None


def _cast_sets(ds, label: str, sets: list[list[Any]], names: list[str], split: str):
    """``ds`` with ``label`` the ``Sequence(ClassLabel(names))`` of ``sets``; DataError for a
    class ``names`` lacks."""
    from datasets import ClassLabel, List

    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({str(v) for vs in sets for v in vs} - set(index))
    if unknown:
        raise DataError(
            f"data: split '{split}' has classes that train does not: {', '.join(unknown[:10])}"
            f"{' …' if len(unknown) > 10 else ''}; fix the labels or drop those images"
        )
    encoded = [sorted({index[str(v)] for v in vs}) for vs in sets]
    target = List(ClassLabel(names=names))
    if ds.features[label] == target and encoded == column(ds, label):
        return ds
    # A new column beside the others: a map (or cast) would rewrite every column, images too.
    order = ds.column_names
    return ds.remove_columns([label]).add_column(label, encoded, feature=target).select_columns(order)


def encode_label_sets(train, others: dict[str, Any], label: str, separator: str = ";"):
    """Multi-label :func:`encode_labels`: ``label`` becomes ``Sequence(ClassLabel(names))`` in
    train and every other split, on train's classes (the declared names of a
    ``Sequence(ClassLabel)``, else the sorted values). Returns (train, others, class names).
    Fails, as for single-label data, with fewer than 2 classes, a class without a training
    image, or another split's class that train lacks."""
    sets, declared = _raw_sets(train, label, separator)
    names = declared if declared is not None else _names_of(sets)
    train = _cast_sets(train, label, sets, names, "train")
    _, classes = label_pairs(train, label)
    _check_counts(np.bincount(classes, minlength=len(names)), names, label)
    out = {split: _cast_sets(ds, label, _raw_sets(ds, label, separator)[0], names, split) for split, ds in others.items()}
    return train, out, names


def label_pairs(dataset, label: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """The (image, class) pairs of a multi-label split's ``label`` column, read from its Arrow
    list column without a row per image in Python: (rows, classes), int64 arrays."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # The one column first: a split with an indices mapping copies what it reads, and a
    # decoded split's other column is every image's pixels.
    chunked = dataset.select_columns([label]).with_format("arrow")[:][label] if len(dataset) else None
    if chunked is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    array = pa.concat_arrays(chunked.chunks) if isinstance(chunked, pa.ChunkedArray) else chunked
    rows = pc.list_parent_indices(array).to_numpy(zero_copy_only=False).astype(np.int64)
    classes = pc.list_flatten(array).to_numpy(zero_copy_only=False).astype(np.int64)
    return rows, classes


def label_summary(dataset, label: str, class_names: list[str]) -> dict[str, Any]:
    """A multi-label split's labels for the data report: images per class, classes per image
    (mean), images with no class."""
    rows, classes = label_pairs(dataset, label)
    n = len(dataset)
    per_image = np.bincount(rows, minlength=n) if n else np.zeros(0, np.int64)
    counts = np.bincount(classes, minlength=len(class_names))
    return {
        "images_per_label": {name: int(counts[i]) for i, name in enumerate(class_names)},
        "labels_per_image": round(float(per_image.mean()), 4) if n else 0.0,
        "images_without_label": int((per_image == 0).sum()),
    }
