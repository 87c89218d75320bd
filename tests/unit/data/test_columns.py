"""columns.py: the image and label columns found from the features, and string labels turned into classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset

from finetune import data
from tests.helpers.data import cfg, labelled
from tests.helpers.images import CLASSES, class_image


def test_columns_found_from_features_and_errors_list_columns() -> None:
    raw = labelled([3, 3])
    assert data.find_columns(raw["train"], cfg()) == ("image", "label")
    two = raw["train"].add_column("other", [0] * 6).cast_column("other", ClassLabel(names=["a", "b"]))
    with pytest.raises(data.DataError, match="data.label_column: .*several candidates: label, other.*one of"):
        data.find_columns(two, cfg())
    with pytest.raises(data.DataError, match="no column 'lbl' in the data; columns are: image, label"):
        data.find_columns(raw["train"], cfg(label_column="lbl"))


def test_string_labels_become_classes_and_eval_is_mapped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        name = CLASSES[i % 3]
        class_image(name, rng, 8).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{name}")
    csv = tmp_path / "data.csv"
    csv.write_text("file,species\n" + "\n".join(rows) + "\n")
    raw = data.load_raw(cfg(dataset=str(csv)))
    s = data.make_splits(raw, cfg(dataset=str(csv), eval_split=None, validation_fraction=0.25), seed=0)
    assert (s.image_column, s.label_column) == ("file", "species")
    assert s.class_names == sorted(CLASSES)


def test_eval_classes_unknown_to_train_fail() -> None:
    train = Dataset.from_dict({"image": ["a.png"] * 4, "label": ["cat", "dog", "cat", "dog"]})
    test = Dataset.from_dict({"image": ["a.png"] * 2, "label": ["cat", "bird"]})
    with pytest.raises(data.DataError, match="split 'test' has classes that train does not: bird"):
        data.encode_labels(train, {"test": test}, "label")


def test_one_class_fails() -> None:
    train = Dataset.from_dict({"image": ["a.png"] * 3, "label": ["cat"] * 3})
    with pytest.raises(data.DataError, match="at least 2"):
        data.encode_labels(train, {}, "label")


def test_a_column_of_text_is_not_taken_for_images() -> None:
    text = Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    with pytest.raises(data.DataError, match=r"no column holds images or image file paths \(columns: text, label\)"):
        data.find_columns(text, cfg())
