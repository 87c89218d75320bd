"""plots.py: the three report PNGs for small and large label sets, with and without mistakes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _report_fixtures import fake_eval
from finetune import plots

PNGS = ("confusion_matrix.png", "misclassified.png", "training_curves.png")

HISTORY = [
    {"epoch": 0.5, "loss": 1.2, "step": 2},
    {"epoch": 1.0, "loss": 0.9, "step": 4},
    {"epoch": 1.0, "eval_loss": 0.8, "eval_accuracy": 0.6, "step": 4},
    {"epoch": 2.0, "loss": 0.5, "step": 8},
    {"epoch": 2.0, "eval_loss": 0.6, "eval_accuracy": 0.8, "step": 8},
    {"epoch": 2.0, "train_loss": 0.8, "train_runtime": 3.0, "step": 8},
    # trainer.evaluate(eval split) after training, as train.py calls write_plots
    {"epoch": 2.0, "eval_loss": 0.55, "eval_accuracy": 0.82, "step": 8},
]


def _open(path):
    with Image.open(path) as image:
        image.verify()  # a complete, valid PNG
    with Image.open(path) as image:
        return image.format, image.size


@pytest.mark.parametrize(
    "num_classes, wrong",
    [(3, 0.0), (100, 0.7)],
    ids=["3-classes-no-mistakes", "100-classes-many-mistakes"],
)
def test_write_plots_valid_pngs(tmp_path, num_classes, wrong):
    predictions, dataset = fake_eval(num_classes, num_images=300, wrong=wrong)
    names = [f"class number {i} with a fairly long name" for i in range(num_classes)]
    plots.write_plots(tmp_path, predictions, names, dataset, HISTORY)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PNGS)  # no .tmp left behind
    sizes = {name: _open(tmp_path / name) for name in PNGS}
    for name, (fmt, (w, h)) in sizes.items():
        assert fmt == "PNG"
        assert 200 <= w <= 5000 and 150 <= h <= 5000, (name, w, h)
    # the matrix grows with the label set so 100 names stay legible
    side = sizes["confusion_matrix.png"][1][0]
    assert side > 2000 if num_classes == 100 else side < 1200


def test_confusion_counts_rows_true_columns_predicted():
    predictions, _ = fake_eval(4, num_images=200, wrong=0.3, seed=3)
    counts = plots.confusion_counts(predictions, 4)
    from sklearn.metrics import confusion_matrix

    assert counts.tolist() == confusion_matrix(predictions.labels, predictions.preds, labels=range(4)).tolist()


def test_worst_mistakes_most_confident_first_and_reads_only_those(tmp_path):
    predictions, dataset = fake_eval(5, num_images=400, wrong=0.5, seed=1)
    chosen = plots.worst_mistakes(predictions)
    wrong = np.flatnonzero(predictions.preds != predictions.labels)
    assert len(chosen) == plots.MAX_MISTAKES
    assert set(chosen) <= set(wrong)
    conf = predictions.confidence[chosen]
    assert np.all(np.diff(conf) <= 0)
    assert conf.min() >= np.sort(predictions.confidence[wrong])[-plots.MAX_MISTAKES]

    read = []

    class Spy:
        """Only row lookups are allowed: memory stays bounded by the images drawn."""

        def __getitem__(self, index):
            assert isinstance(index, int)
            read.append(index)
            return dataset[index]

    plots.write_plots(tmp_path, predictions, [f"c{i}" for i in range(5)], Spy(), HISTORY)
    assert sorted(read) == sorted(int(i) for i in chosen)


def test_no_mistakes_draws_a_note_and_reads_no_image(tmp_path):
    predictions, _ = fake_eval(3, num_images=50, wrong=0.0)

    class NoAccess:
        def __getitem__(self, index):
            raise AssertionError("no image should be read when there are no mistakes")

    plots.write_plots(tmp_path, predictions, ["a", "b", "c"], NoAccess(), HISTORY)
    assert _open(tmp_path / "misclassified.png")[0] == "PNG"


def test_history_series_keep_final_eval_apart():
    s = plots.split_history(HISTORY)
    assert s["loss"] == [(0.5, 1.2), (1.0, 0.9), (2.0, 0.5)]
    assert s["eval_loss"] == [(1.0, 0.8), (2.0, 0.6)]
    assert s["eval_accuracy"] == [(1.0, 0.6), (2.0, 0.8)]
    assert s["final_accuracy"] == [(2.0, 0.82)]
    assert s["mean_train_loss"] == [(2.0, 0.8)]


@pytest.mark.parametrize(
    "history",
    [
        [{"epoch": 1.0, "loss": 1.0, "step": 5}, {"epoch": 2.0, "loss": 0.7, "step": 10},
         {"epoch": 2.0, "train_loss": 0.85, "train_runtime": 1.0, "step": 10}],
        [{"epoch": 1.0, "train_loss": 0.9, "train_runtime": 1.0, "step": 3}],
        [],
    ],
    ids=["no-eval-entries", "only-summary", "empty"],
)
def test_training_curves_without_eval_entries(tmp_path, history):
    predictions, dataset = fake_eval(3, num_images=30, wrong=0.2)
    plots.write_plots(tmp_path, predictions, ["a", "b", "c"], dataset, history)
    fmt, (w, h) = _open(tmp_path / "training_curves.png")
    assert fmt == "PNG" and w > 300 and h > 150
    assert not plots.split_history(history)["eval_accuracy"]


def test_pyplot_state_untouched(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    predictions, dataset = fake_eval(3, num_images=30, wrong=0.2)
    plots.write_plots(tmp_path, predictions, ["a", "b", "c"], dataset, HISTORY)
    assert matplotlib.get_backend() == backend
    import sys

    if "matplotlib.pyplot" in sys.modules:  # no figures left open in pyplot's registry
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_rows_as_images_from_numpy_or_torch():
    import torch

    chw = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    expected = chw.transpose(1, 2, 0)
    assert np.array_equal(plots._as_hwc(chw), expected)
    assert np.array_equal(plots._as_hwc(torch.from_numpy(chw)), expected)
    assert plots._as_hwc(chw[:1]).shape == (4, 5)  # one channel → greyscale
