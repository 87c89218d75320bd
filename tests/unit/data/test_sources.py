"""sources.py: image folders and data files with relative image paths loaded, and clear errors for missing or empty ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from finetune import data
from finetune.data import sources
from finetune.recipe import DataConfig
from tests.helpers.data import cfg
from tests.helpers.images import CLASSES, class_image, make_image_folder


def test_image_folder_with_split_folders(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=4)
    raw = data.load_raw(cfg(dataset=str(root)))
    assert set(raw) == {"train", "test"}
    s = data.make_splits(raw, cfg(dataset=str(root), validation_fraction=0.25), seed=0)
    assert s.class_names == sorted(CLASSES)  # never "train"/"test" as classes


def test_missing_dataset_path_is_clear(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="no such"):
        data.load_raw(cfg(dataset=str(tmp_path / "nope")))


def test_a_folder_without_images_says_so(tmp_path: Path) -> None:
    """Text and PDF files only (top level or under train/ and test/), nothing, or only
    system files: the error says no image was found, not which column might hold one."""
    docs = tmp_path / "docs"
    for name in ("train/notes.txt", "train/paper.pdf", "test/readme.txt"):
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text("not an image")
    with pytest.raises(data.DataError) as err:
        data.load_raw(cfg(dataset=str(docs)))
    message = str(err.value)
    assert message.startswith(f"data.dataset: no image files found in '{docs}' (looked for .bmp, .gif, .jfif")
    assert "found 3 other file(s) such as test/readme.txt, train/notes.txt, train/paper.pdf" in message
    assert "one sub-folder per class" in message and "\n" not in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError, match=r"no image files found in .*empty.*; it is empty\)"):
        data.load_raw(cfg(dataset=str(empty)))
    junk = tmp_path / "junk"
    (junk / "__MACOSX").mkdir(parents=True)
    (junk / "__MACOSX" / "._a.jpg").write_bytes(b"x")
    (junk / ".DS_Store").write_bytes(b"x")
    (junk / "Thumbs.db").write_bytes(b"x")
    with pytest.raises(data.DataError, match=r"only hidden or system files, which are ignored: .*\.DS_Store"):
        data.load_raw(cfg(dataset=str(junk)))


def test_class_folders_reached_through_links_count(tmp_path: Path) -> None:
    """Class folders that are symbolic links count (a link back up does not loop)."""
    real = make_image_folder(tmp_path / "real", per_class=2, splits=("",))
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in CLASSES:
        (linked / name).symlink_to(real / name, target_is_directory=True)
    sources.check_holds_images(linked)
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "notes.txt").write_text("x")
    (loop / "up").symlink_to(loop, target_is_directory=True)
    with pytest.raises(data.DataError, match="found 1 other file"):
        sources.check_holds_images(loop)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_data_files_with_relative_image_paths(tmp_path: Path, suffix: str) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for i in range(9):
        name = CLASSES[i % 3]
        class_image(name, rng, 8).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": name})
    frame = pd.DataFrame(rows)
    file = tmp_path / f"data{suffix}"
    {".csv": lambda: frame.to_csv(file, index=False), ".jsonl": lambda: frame.to_json(file, orient="records", lines=True),
     ".parquet": lambda: frame.to_parquet(file)}[suffix]()
    raw = data.load_raw(cfg(dataset=str(file)))
    s = data.make_splits(raw, cfg(dataset=str(file), eval_split=None, validation_fraction=0.34), seed=0)
    assert (s.image_column, s.label_column, s.class_names) == ("path", "label", sorted(CLASSES))
    from transformers import ViTImageProcessor

    decoded = data.decode(s.train, ViTImageProcessor(size={"height": 16, "width": 16}), "path", "label", None, "t")
    assert decoded.bad == [] and len(decoded.dataset) == 6


@pytest.mark.parametrize("name", ["./missing", "/no/such/folder", "a/b/c", "~/no-such-folder-here"])
def test_a_missing_local_data_folder_is_named_as_such(name: str) -> None:
    """A path-like name that does not exist never becomes a Hub lookup (offline or not)."""
    with pytest.raises(data.DataError, match=f"no such folder or file '{name}'"):
        data.load_raw(DataConfig(dataset=name))
