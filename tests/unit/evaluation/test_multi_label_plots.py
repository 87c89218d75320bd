"""multi_label_plots.py: per_class_ap.png sorted by AP with the support, worst_images.png captioned with the label sets, Chinese names drawn; reports.py picks the pictures by the kind of predictions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from finetune.evaluation import multi_label_plots, plots, reports
from finetune.evaluation.multi_label_metrics import average_precisions
from tests.helpers.multi_label_eval import eval_images, predictions
from tests.helpers.runs import fake_eval
from tests.unit.evaluation.test_plots import HISTORY, _glyph_warnings, font_list, make_han_font  # noqa: F401

PNGS = ("per_class_ap.png", "training_curves.png", "worst_images.png")
ML_HISTORY = [
    {"epoch": 1.0, "loss": 0.7, "step": 4},
    {"epoch": 1.0, "eval_loss": 0.6, "eval_map": 0.5, "step": 4},
    {"epoch": 2.0, "eval_loss": 0.5, "eval_map": 0.7, "step": 8},
    {"epoch": 2.0, "train_loss": 0.6, "train_runtime": 3.0, "step": 8},
    {"epoch": 2.0, "eval_loss": 0.5, "eval_map": 0.72, "step": 8},
]


def _open(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.format, image.size


@pytest.mark.parametrize("num_classes", [4, 150])
def test_the_pictures_are_written_whole(tmp_path, num_classes) -> None:
    p = predictions(120, num_classes, 0, skill=0.3)
    reports.write_plots(tmp_path, p, [f"class {i}" for i in range(num_classes)], eval_images(120), ML_HISTORY)
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(PNGS)
    for name in PNGS:
        fmt, (w, h) = _open(tmp_path / name)
        assert fmt == "PNG" and 200 <= w <= 5000 and 150 <= h <= 5000, (name, w, h)


def test_the_bars_are_sorted_by_ap_with_the_support_in_the_label() -> None:
    p = predictions(200, 5, 1, skill=0.3)
    p.targets[:, 4] = 0  # no positive: no AP, listed last
    names = ["a", "b", "c", "d", "e"]
    fig = multi_label_plots.ap_figure(p, names)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ap = average_precisions(p.probs, p.truth)
    order = [names[c] for c in np.argsort(-np.nan_to_num(ap[:4]))] + ["e"]
    support = p.truth.sum(axis=0)
    assert ticks == [f"{n} ({support[names.index(n)]})" for n in order]
    assert "over 4 class(es)" in fig.axes[0].get_title()


def test_many_classes_show_the_best_and_the_worst() -> None:
    p = predictions(100, 150, 2, skill=0.3)
    fig = multi_label_plots.ap_figure(p, [f"c{i}" for i in range(150)])
    assert len(fig.axes[0].get_yticklabels()) == multi_label_plots.MAX_BARS


def test_the_worst_images_are_captioned_with_their_label_sets() -> None:
    p = predictions(40, 3, 3, thresholds=[0.5, 0.5, 0.5], skill=0.2)
    worst = int(np.argmax(np.abs(p.probs.astype(float) - p.targets).sum(axis=1)))
    read = []

    class Rows:
        def __getitem__(self, index):
            read.append(index)
            return {"pixel_values": np.zeros((3, 8, 8), np.uint8)}

    names = ["cat", "dog", "bird"]
    fig = multi_label_plots.worst_figure(p, names, Rows())
    first = fig.axes[0].get_title()
    true = [names[c] for c in np.flatnonzero(p.truth[worst])] or ["(none)"]
    said = sorted(np.flatnonzero(p.predicted[worst]), key=lambda c: -p.probs[worst, c])
    assert first.startswith("true: " + multi_label_plots.label_set(true if true != ["(none)"] else []))
    assert first.endswith("pred: " + multi_label_plots.label_set([names[c] for c in said], p.probs[worst, said]))
    # Only the pictured images are read.
    assert read[0] == worst and len(read) == multi_label_plots.MAX_WORST


def test_the_label_sets_are_cut_in_captions() -> None:
    assert multi_label_plots.label_set([]) == "(none)"
    assert multi_label_plots.label_set(list("abcdef")) == "a, b,\nc, d +2"
    assert multi_label_plots.label_set(["a", "b"], np.array([0.9, 0.51])) == "a 0.90, b 0.51"
    assert multi_label_plots.label_set(["x" * 30]) == "x" * 15 + "…"


def test_chinese_names_are_drawn_with_a_font_that_has_them(tmp_path, monkeypatch, font_list, caplog) -> None:  # noqa: F811
    font = make_han_font(tmp_path / "han.ttf")
    monkeypatch.setattr(plots, "candidate_fonts", lambda: [str(font)])
    p = predictions(60, 3, 4, skill=0.3)
    with warnings.catch_warnings(record=True) as record, caplog.at_level("WARNING", logger="finetune.evaluation.plots"):
        warnings.simplefilter("always")
        reports.write_plots(tmp_path / "out", p, ["猫", "狗", "鸟"], eval_images(60), ML_HISTORY)
    assert _glyph_warnings(record) == [] and not caplog.records
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == sorted(PNGS)


def test_the_curves_follow_the_runs_metric() -> None:
    s = plots.split_history(ML_HISTORY, "map")
    assert s["eval_map"] == [(1.0, 0.5), (2.0, 0.7)] and s["final_map"] == [(2.0, 0.72)]
    fig = plots.curves_figure(ML_HISTORY, "map", "mAP (macro)")
    assert fig.axes[1].get_title() == "mAP (macro)"



def test_without_map_the_curves_show_the_first_metric_logged(tmp_path, monkeypatch) -> None:
    drawn = []
    real = plots.curves_figure
    monkeypatch.setattr(plots, "curves_figure", lambda history, metric, title: drawn.append((metric, title)) or real(history, metric, title))
    history = [{"epoch": 1.0, "eval_loss": 0.5, "eval_f1_micro": 0.6, "step": 2}]
    multi_label_plots.write_plots(tmp_path, predictions(20, 3, 0), ["a", "b", "c"], eval_images(20), history)
    assert drawn == [("f1_micro", "F1 (micro)")]


def test_single_label_predictions_still_get_their_pictures(tmp_path) -> None:
    p, dataset = fake_eval(3, num_images=30, wrong=0.2)
    reports.write_plots(tmp_path, p, ["a", "b", "c"], dataset, HISTORY)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["confusion_matrix.png", "misclassified.png", "training_curves.png"]


def test_the_pictures_each_kind_writes() -> None:
    assert reports.pictures(False) == ("confusion_matrix.png", "misclassified.png", "training_curves.png")
    assert reports.pictures(True) == ("per_class_ap.png", "worst_images.png", "training_curves.png")
