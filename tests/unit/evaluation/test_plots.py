"""plots.py: the three report PNGs for small and large label sets, with and without mistakes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from finetune.evaluation import plots
from tests.helpers.runs import fake_eval

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
    assert np.array_equal(plots.as_hwc(chw), expected)
    assert np.array_equal(plots.as_hwc(torch.from_numpy(chw)), expected)
    assert plots.as_hwc(chw[:1]).shape == (4, 5)  # one channel → greyscale


# ------------------------------------------------------------- class names in any script

CJK_NAMES = ["猫", "狗", "鸟 bird"]


def make_han_font(path, family: str = "Finetune Test Han", chars: str = "猫狗鸟"):
    """A tiny TrueType font whose only glyphs are squares for ``chars`` (and a space): a
    font with the characters DejaVu Sans lacks, built here so the test needs none installed."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    def square():
        pen = TTGlyphPen(None)
        pen.moveTo((100, -100))
        pen.lineTo((100, 800))
        pen.lineTo((900, 800))
        pen.lineTo((900, -100))
        pen.closePath()
        return pen.glyph()

    glyph_names = {ord(c): f"uni{ord(c):04X}" for c in chars}
    order = [".notdef", "space", *glyph_names.values()]
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(order)
    builder.setupCharacterMap({32: "space", **glyph_names})
    builder.setupGlyf({name: TTGlyphPen(None).glyph() if name == "space" else square() for name in order})
    builder.setupHorizontalMetrics({name: (1000, 100) for name in order})
    builder.setupHorizontalHeader(ascent=880, descent=-120)
    builder.setupNameTable({"familyName": family, "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=880, sTypoDescender=-120, usWinAscent=880, usWinDescent=120)
    builder.setupPost()
    builder.save(str(path))
    return path


def _glyph_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "missing from font" in str(w.message)]


@pytest.fixture
def font_list(monkeypatch):
    """matplotlib's font list, restored after the test (the search registers what it finds)."""
    from matplotlib import font_manager

    monkeypatch.setattr(font_manager.fontManager, "ttflist", list(font_manager.fontManager.ttflist))


def test_the_glyph_check_sees_boxes(tmp_path):
    """The warning the tests below look for is what matplotlib says when it draws boxes."""
    fig = plots.new_figure(3, 2)
    fig.subplots().set_title("猫")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plots.save_figure(fig, tmp_path / "boxes.png")
    assert _glyph_warnings(record)


def test_a_font_with_the_characters_is_found_and_drawn_with(tmp_path, monkeypatch, font_list, caplog):
    font = make_han_font(tmp_path / "han.ttf")
    monkeypatch.setattr(plots, "candidate_fonts", lambda: [str(font)])
    labels = plots.class_labels(CJK_NAMES)
    assert labels.text == CJK_NAMES and labels.by_index == [] and labels.note is None
    from matplotlib import rcParams

    assert labels.family == [*rcParams["font.family"], "Finetune Test Han"]
    predictions, dataset = fake_eval(3, num_images=60, wrong=0.4)
    with warnings.catch_warnings(record=True) as record, caplog.at_level("WARNING", logger="finetune.evaluation.plots"):
        warnings.simplefilter("always")
        plots.write_plots(tmp_path / "out", predictions, CJK_NAMES, dataset, HISTORY)
    assert _glyph_warnings(record) == [] and not caplog.records
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(PNGS)


def test_without_such_a_font_the_pictures_write_indices_and_the_log_says_what_to_install(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(plots, "candidate_fonts", lambda: [])
    labels = plots.class_labels(["cat", "狗", "鸟 bird"])
    assert labels.text == ["cat", "#1", "#2"] and labels.by_index == [1, 2]
    assert "id2label" in labels.note
    predictions, dataset = fake_eval(3, num_images=60, wrong=0.4)
    with warnings.catch_warnings(record=True) as record, caplog.at_level("WARNING", logger="finetune.evaluation.plots"):
        warnings.simplefilter("always")
        plots.write_plots(tmp_path, predictions, CJK_NAMES, dataset, HISTORY)
    assert _glyph_warnings(record) == []
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "apt-get install fonts-noto-cjk" in lines[0] and "#0 猫" in lines[0]


def test_latin_names_search_no_font(monkeypatch):
    def no_search():
        raise AssertionError("searched the installed fonts for names the default font draws")

    monkeypatch.setattr(plots, "candidate_fonts", no_search)
    from matplotlib import rcParams

    labels = plots.class_labels(["cat", "Hund", "oiseau", "café"])
    assert labels.text == ["cat", "Hund", "oiseau", "café"] and labels.family == list(rcParams["font.family"])


def test_other_scripts_get_their_own_install_hint():
    assert "fonts-noto-cjk" in plots.install_hint("한")
    assert "fonts-noto-cjk" in plots.install_hint("ねこ")
    assert "fonts-noto-core" in plots.install_hint("ሰ")


def test_an_installed_cjk_font_draws_the_names(tmp_path, font_list):
    """With a real CJK font on the system (fonts-noto-cjk, fonts-wqy-microhei...)."""
    labels = plots.class_labels(CJK_NAMES)
    if labels.by_index:
        pytest.skip("no installed font has Chinese characters (e.g. apt-get install fonts-noto-cjk)")
    assert labels.text == CJK_NAMES and len(labels.family) > 1
    predictions, dataset = fake_eval(3, num_images=60, wrong=0.4)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plots.write_plots(tmp_path, predictions, CJK_NAMES, dataset, HISTORY)
    assert _glyph_warnings(record) == []
