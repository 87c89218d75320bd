"""The streaming path reads one class per image: multi-label sources are refused in one line, so that "auto" takes the decode cache and true says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune import data
from finetune.data.streaming.open import open_stream
from finetune.recipe import DataConfig
from tests.helpers.images import make_image_folder
from tests.helpers.multi_label import write_multi_label_set


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_each_multi_label_layout_is_refused_naming_the_column_and_the_fix(tmp_path: Path, kind: str) -> None:
    written = write_multi_label_set(tmp_path / kind, kind, n_train=12, n_test=4)
    # A table file of image paths is read by the listed reader, a folder of files by its builder.
    target = Path(written.dataset) / f"train.{kind}" if kind != "parquet" else Path(written.dataset) / "train.parquet"
    cfg = DataConfig(dataset=str(target), eval_split=None)
    with pytest.raises(data.DataError) as err:
        open_stream(cfg, ["train"])
    message = str(err.value)
    assert message.startswith("data.streaming: 'labels' holds several classes per image (multi-label data)")
    assert "set data.streaming to false or 'auto'" in message and len(message.splitlines()) == 1


def test_a_separator_in_text_is_multi_label_only_while_the_task_is_auto(tmp_path: Path) -> None:
    written = write_multi_label_set(tmp_path / "t", "csv", n_train=12, n_test=4, empty_every=0)
    table = Path(written.dataset) / "train.csv"
    with pytest.raises(data.DataError, match="holds several classes per image"):
        open_stream(DataConfig(dataset=str(table), eval_split=None), ["train"])
    # single_label: "blue;red" is a class of its own, streamed as before.
    source = open_stream(DataConfig(dataset=str(table), eval_split=None, task="single_label"), ["train"])
    assert any(";" in name for name in source.class_names)
    with pytest.raises(data.DataError, match="data.task is 'multi_label'"):
        open_stream(DataConfig(dataset=str(table), eval_split=None, task="multi_label"), ["train"])


def test_an_image_folder_still_streams(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs", per_class=2)
    source = open_stream(DataConfig(dataset=str(folder)), ["train", "test"])
    assert source.kind == "image folder" and len(source.class_names) == 3
