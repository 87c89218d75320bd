"""prepared_data and streamed_data with multi-label data: the decode cache is chosen, the labels are reported per split, and a class whose images are all unreadable is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from finetune import data
from finetune.recipe import recipe_from_dict
from finetune.training import prepared_data, streamed_data
from tests.helpers.multi_label import write_multi_label_set


def recipe(dataset: str, out: Path, model: str = "m", **data_keys):
    return recipe_from_dict({"description": "d", "model": {"name_or_path": model}, "output_dir": str(out),
                             "data": {"dataset": dataset, **data_keys}})


def test_auto_takes_the_decode_cache_for_multi_label_data_and_true_is_refused(tmp_path: Path, tiny_vit: Path) -> None:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    written = write_multi_label_set(tmp_path / "ml", "jsonl", n_train=12, n_test=4)
    table = str(Path(written.dataset) / "train.jsonl")
    choice = streamed_data.choose(recipe(table, tmp_path / "o", eval_split=None), processor)
    assert not choice.stream and choice.why.startswith("it cannot be streamed (data.streaming: 'labels' holds several")
    with pytest.raises(data.DataError, match="holds several classes per image"):
        streamed_data.choose(recipe(table, tmp_path / "o", eval_split=None, streaming=True), processor)
    choice = streamed_data.choose(recipe(table, tmp_path / "o", eval_split=None, task="multi_label"), processor)
    assert not choice.stream and choice.why.startswith("'data.task' 'multi_label': the streaming path reads one class")


def test_the_data_report_counts_the_labels_of_every_piece(tmp_path: Path, tiny_vit: Path) -> None:
    from finetune.models.classifier import load_processor

    written = write_multi_label_set(tmp_path / "ml", "csv", n_train=32, n_test=16)
    r = recipe(written.dataset, tmp_path / "out", model=str(tiny_vit), validation_fraction=0.25)
    prepared = prepared_data.prepare_data(r, load_processor(r.model, None), seed=0)
    prepared_data.check_prepared(prepared, r.data)
    report = prepared.data_report
    assert prepared.splits.multi_label and report["task"] == "multi_label"
    assert set(report["labels"]) == {"train", "validation", "eval"}
    test = report["labels"]["eval"]
    given = written.labels["test"]
    assert test["images_without_label"] == sum(1 for s in given if not s)
    assert test["labels_per_image"] == pytest.approx(np.mean([len(s) for s in given]), abs=1e-4)
    assert test["images_per_label"] == {c: sum(c in s for s in given) for c in written.classes}
    pieces = report["labels"]
    assert sum(pieces[p]["images_per_label"]["red"] for p in ("train", "validation")) == sum("red" in s for s in written.labels["train"])
    texts = prepared_data.label_texts(prepared.eval, prepared.splits.class_names, True)
    assert texts == [";".join(s) for s in given]


def test_a_class_whose_training_images_are_all_unreadable_is_named(tmp_path: Path, tiny_vit: Path) -> None:
    from finetune.models.classifier import load_processor

    written = write_multi_label_set(tmp_path / "ml", "csv", n_train=32, n_test=8)
    for path, labels in zip(written.images["train"], written.labels["train"]):
        if "yellow" in labels:
            Path(path).write_bytes(b"not an image")
    r = recipe(written.dataset, tmp_path / "out", model=str(tiny_vit), validation_fraction=0, max_bad_fraction=1.0)
    prepared = prepared_data.prepare_data(r, load_processor(r.model, None), seed=0)
    with pytest.raises(data.DataError, match="every training image of class\\(es\\) yellow \\(\\d+ images?\\) is unreadable"):
        prepared_data.check_prepared(prepared, r.data)
