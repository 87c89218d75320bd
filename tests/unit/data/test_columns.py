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


# ------------------------------------------------------------------------------ multi-label


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_each_multi_label_layout_is_found_and_encoded_in_every_split(tmp_path: Path, kind: str) -> None:
    from datasets import ClassLabel, List

    from tests.helpers.multi_label import write_multi_label_set

    written = write_multi_label_set(tmp_path / kind, kind)
    c = cfg(dataset=written.dataset)
    s = data.make_splits(data.load_raw(c), c, seed=0)
    assert s.multi_label and s.class_names == written.classes
    for split in (s.train, s.validation, s.eval):
        assert split.features[s.label_column] == List(ClassLabel(names=written.classes))
    # The eval split's label sets are the written ones, image for image.
    assert [[written.classes[i] for i in v] for v in s.eval[s.label_column][:]] == written.labels["test"]


def test_a_separated_text_column_is_split_stripped_deduplicated_and_sorted() -> None:
    from datasets import Dataset

    train = Dataset.from_dict({"image": ["a.png"] * 5, "labels": ["dog;cat", " cat ; ;dog;cat", "", None, "bird"]})
    assert data.is_multi_label_column([train], "labels", cfg())
    out, _, names = data.encode_label_sets(train, {}, "labels", ";")
    assert names == ["bird", "cat", "dog"]
    assert out["labels"][:] == [[1, 2], [1, 2], [], [], [0]]
    rows, classes = data.label_pairs(out, "labels")
    assert rows.tolist() == [0, 0, 1, 1, 4] and classes.tolist() == [1, 2, 1, 2, 0]
    summary = data.label_summary(out, "labels", names)
    assert summary == {"images_per_label": {"bird": 1, "cat": 2, "dog": 2}, "labels_per_image": 1.0, "images_without_label": 2}


def test_text_without_the_separator_stays_single_label_and_the_separator_is_the_recipes() -> None:
    from datasets import Dataset

    plain = Dataset.from_dict({"image": ["a.png"] * 3, "label": ["cat", "dog", "cat"]})
    assert not data.is_multi_label_column([plain], "label", cfg())
    piped = Dataset.from_dict({"image": ["a.png"] * 2, "label": ["cat|dog", "cat"]})
    assert not data.is_multi_label_column([piped], "label", cfg())
    assert data.is_multi_label_column([piped], "label", cfg(label_separator="|"))
    # One split with the separator makes the column multi-label (here the test split).
    assert data.is_multi_label_column([plain, piped], "label", cfg(label_separator="|"))
    # single_label keeps a separated text as one class; multi_label makes a plain text a set of one.
    assert not data.is_multi_label_column([piped], "label", cfg(task="single_label", label_separator="|"))
    assert data.is_multi_label_column([plain], "label", cfg(task="multi_label"))


def test_an_image_folder_stays_single_label_and_multi_label_on_it_says_why(image_folder: Path) -> None:
    raw = data.load_raw(cfg(dataset=str(image_folder)))
    s = data.make_splits(raw, cfg(dataset=str(image_folder)), seed=0)
    assert not s.multi_label
    with pytest.raises(data.DataError) as err:
        data.make_splits(raw, cfg(dataset=str(image_folder), task="multi_label"), seed=0)
    message = str(err.value)
    assert message.startswith("data.task: 'multi_label', but 'label' cannot hold several classes per image")
    assert "an image folder gives each image the one class of its sub-folder" in message and "CSV or JSON-lines" in message
    assert len(message.splitlines()) == 1


def test_a_list_column_with_a_single_label_task_is_refused() -> None:
    from datasets import Dataset

    listed = Dataset.from_dict({"image": ["a.png"] * 2, "labels": [["cat"], ["dog", "cat"]]})
    with pytest.raises(data.DataError, match="data.task: 'single_label', but 'labels' holds a list of classes"):
        data.is_multi_label_column([listed], "labels", cfg(task="single_label"))


def test_other_splits_map_onto_trains_classes_with_the_single_label_errors() -> None:
    from datasets import ClassLabel, Dataset, Features, List, Value

    train = Dataset.from_dict({"image": ["a.png"] * 3, "labels": [["dog"], ["cat", "dog"], ["cat"]]})
    # Another split declaring other names in another order is mapped by name.
    theirs = Dataset.from_dict(
        {"image": ["a.png"] * 2, "labels": [[0], [1, 0]]},
        features=Features({"image": Value("string"), "labels": List(ClassLabel(names=["dog", "cat"]))}),
    )
    _, others, names = data.encode_label_sets(train, {"test": theirs}, "labels")
    assert names == ["cat", "dog"] and others["test"]["labels"][:] == [[1], [0, 1]]
    bird = Dataset.from_dict({"image": ["a.png"] * 2, "labels": [["cat"], ["bird"]]})
    with pytest.raises(data.DataError, match="split 'test' has classes that train does not: bird"):
        data.encode_label_sets(train, {"test": bird}, "labels")
    one = Dataset.from_dict({"image": ["a.png"] * 2, "labels": [["cat"], []]})
    with pytest.raises(data.DataError, match="has 1 class in the training split; classification needs at least 2"):
        data.encode_label_sets(one, {}, "labels")
    declared = Dataset.from_dict(
        {"image": ["a.png"] * 2, "labels": [[0], [1]]},
        features=Features({"image": Value("string"), "labels": List(ClassLabel(names=["a", "b", "c"]))}),
    )
    with pytest.raises(data.DataError, match="class\\(es\\) c have no training images"):
        data.encode_label_sets(declared, {}, "labels")


def test_mapping_an_eval_set_onto_a_multi_label_models_classes() -> None:
    from datasets import ClassLabel, Dataset, Features, List, Value

    names = ["cat", "dog", "fox"]
    listed = Dataset.from_dict({"image": ["a.png"] * 3, "labels": ["fox;cat", "dog", ""]})
    mapped = data.map_to_model_classes(listed, "labels", names, "data.eval_sets.x", multi_label=True)
    assert mapped.features["labels"] == List(ClassLabel(names=names)) and mapped["labels"][:] == [[0, 2], [1], []]
    # Found from the data when not given: the separator makes it multi-label.
    assert data.map_to_model_classes(listed, "labels", names, "x")["labels"][:] == [[0, 2], [1], []]
    # A set of one class per image, scored by a multi-label model: each image's set has one class.
    single = Dataset.from_dict(
        {"image": ["a.png"] * 2, "label": [1, 0]},
        features=Features({"image": Value("string"), "label": ClassLabel(names=["fox", "cat"])}),
    )
    assert data.map_to_model_classes(single, "label", names, "x", multi_label=True)["label"][:] == [[0], [2]]
    with pytest.raises(data.DataError, match="x has 1 class\\(es\\) that the model does not know: owl"):
        data.map_to_model_classes(Dataset.from_dict({"image": ["a.png"], "labels": [["owl"]]}), "labels", names, "x", True)
    with pytest.raises(data.DataError, match="x holds several classes per image, but the model is single-label"):
        data.map_to_model_classes(Dataset.from_dict({"image": ["a.png"], "labels": [["cat"]]}), "labels", names, "x", False)
    with pytest.raises(data.DataError, match="x has no labels at all"):
        data.map_to_model_classes(Dataset.from_dict({"image": ["a.png"], "labels": [""]}), "labels", names, "x", True)
