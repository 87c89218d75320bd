"""Streamed sources: the image-folder listing finds what ``datasets`` finds, in one walk; parquet, WebDataset tars and tables of paths give sizes, classes and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finetune.data import DataError
from finetune.data.streaming.open import open_stream
from finetune.data.streaming.sources import ListedSplit, list_image_folder
from tests.helpers.data import cfg
from tests.helpers.images import CLASSES, class_image, make_image_folder
from tests.helpers.streams import write_parquet, write_tars


def datasets_listing(root: Path) -> dict[str, list[tuple[str, str]]]:
    """What ``datasets`` itself lists for a folder: split → sorted (relative path, class)."""
    from datasets import Image, load_dataset

    out = {}
    for split, ds in load_dataset(str(root), streaming=True).items():
        names = ds.features["label"].names
        ds = ds.cast_column("image", Image(decode=False))
        out[split] = sorted((str(Path(r["image"]["path"]).relative_to(root)), names[r["label"]]) for r in ds)
    return out


def ours(root: Path) -> dict[str, list[tuple[str, str]]] | None:
    listed = list_image_folder(root)
    if listed is None:
        return None
    splits, names = listed
    return {split: sorted((str(k), names[l]) for k, l in zip(s.keys, s.labels)) for split, s in splits.items()}


def test_the_folder_listing_is_what_datasets_lists(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    flat = make_image_folder(tmp_path / "flat", per_class=3, splits=("",))
    split = make_image_folder(tmp_path / "split", per_class=3, splits=("train", "test"))
    val = tmp_path / "val"
    for where in ("train/cat", "train/dog", "val/cat", "val/dog"):
        (val / where).mkdir(parents=True)
        for i in range(2):
            class_image(CLASSES[i], rng).save(val / where / f"{i}.jpg")
    (val / "README.md").write_text("A data set.\n")
    (val / "train" / "cat" / ".DS_Store").write_bytes(b"junk")
    for root in (flat, split, val):
        assert ours(root) == datasets_listing(root), root.name


@pytest.mark.parametrize("layout", ["metadata", "keyword class", "mixed depth", "yaml card"])
def test_other_layouts_are_left_to_datasets(tmp_path: Path, layout: str) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=2, splits=("train",))
    if layout == "metadata":
        (root / "train" / "metadata.csv").write_text("file_name,label\n")
    elif layout == "keyword class":
        (root / "train" / "red").rename(root / "train" / "red_test")
    elif layout == "mixed depth":
        class_image("red", np.random.default_rng(0)).save(root / "train" / "loose.png")
    else:
        (root / "README.md").write_text("---\nconfigs: []\n---\n")
    assert list_image_folder(root) is None


def test_a_folder_is_listed_without_datasets_pattern_search(tmp_path: Path, monkeypatch) -> None:
    import datasets

    root = make_image_folder(tmp_path / "imgs", per_class=2)
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda *a, **k: pytest.fail("datasets was asked"))
    source = open_stream(cfg(dataset=str(root)), ["train", "test"])
    assert source.kind == "image folder" and isinstance(source.splits["train"], ListedSplit)
    assert source.class_names == sorted(CLASSES) and len(source.splits["train"]) == 6


def test_parquet_row_groups_are_the_shards(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d" / "train.parquet", [4, 6, 3])
    source = open_stream(cfg(dataset=str(path), eval_split=None), ["train"])
    split = source.splits["train"]
    assert source.kind == "parquet row groups" and split.sizes == [4, 6, 3]
    assert source.class_names == sorted(CLASSES) and (source.image_column, source.label_column) == ("image", "label")
    rows = list(split.read(1, 2))
    assert [r.key for r in rows] == ["train.parquet:1#2", "train.parquet:1#3", "train.parquet:1#4", "train.parquet:1#5"]
    assert [r.label for r in rows] == [i % 3 for i in range(6, 10)]


def test_an_eval_split_with_its_classes_in_another_order_is_mapped_by_name(tmp_path: Path) -> None:
    names = sorted(CLASSES)
    write_parquet(tmp_path / "d" / "data" / "train-00000-of-00001.parquet", [6], names=names)
    write_parquet(tmp_path / "d" / "data" / "test-00000-of-00001.parquet", [3], names=names[::-1])
    source = open_stream(cfg(dataset=str(tmp_path / "d")), ["train", "test"])
    test = source.splits["test"]
    assert [r.label for r in test.read(0)] == [2, 1, 0]  # stored 0, 1, 2 under the reversed names


def test_webdataset_tars_are_sized_and_labelled_from_their_headers(tmp_path: Path) -> None:
    write_tars(tmp_path / "w", [5, 2])
    source = open_stream(cfg(dataset=str(tmp_path / "w"), eval_split=None), ["train"])
    split = source.splits["train"]
    assert source.kind == "WebDataset tar shards" and split.sizes == [5, 2]
    assert source.class_names == ["0", "1", "2"] and (source.image_column, source.label_column) == ("jpg", "cls")
    assert [r.label for r in split.read(1)] == [2, 0]
    assert next(split.read(0, 4)).key == "train-00000.tar#4"


def test_a_tar_sample_without_a_label_is_one_line(tmp_path: Path) -> None:
    import io
    import tarfile

    path = write_tars(tmp_path / "w", [2])[0]
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo("orphan.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(DataError, match=r"1 sample\(s\) in '.*train-00000.tar' have no 'cls' member"):
        open_stream(cfg(dataset=str(tmp_path / "w"), eval_split=None), ["train"])


def test_a_table_of_paths_is_listed(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=2, splits=("",))
    rows = [{"file": f"imgs/{c}/{c}_{i}.png", "label": c} for c in CLASSES for i in range(2)]
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    source = open_stream(cfg(dataset=str(tmp_path / "list.jsonl"), eval_split=None), ["train"])
    split = source.splits["train"]
    assert source.kind == "table of image paths" and len(split) == 6 and source.class_names == sorted(CLASSES)
    assert all(Path(v).is_file() for v in split.values)
    assert root.is_dir()


def test_what_cannot_be_streamed_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="built-in set"):
        open_stream(cfg(dataset="builtin:digits"), ["train"])
    (tmp_path / "x.arrow").write_bytes(b"")
    with pytest.raises(DataError, match="cannot be streamed"):
        open_stream(cfg(dataset=str(tmp_path / "x.arrow")), ["train"])
    root = make_image_folder(tmp_path / "imgs", per_class=2, splits=("train",))
    with pytest.raises(DataError, match="data.eval_split: 'test' is not a split"):
        open_stream(cfg(dataset=str(root)), ["train", "test"])
