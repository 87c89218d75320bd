"""The reliability diagram (``reliability.png``): accuracy against top probability in 15 bins, before and after temperature scaling.

A perfectly calibrated model's bars sit on the diagonal; bars below it mean the model is
more sure than it is right (over-confident), bars above it less. The lower panel shows the
share of images in each bin, since a bin with few images says little. Drawn like the other
report images (:mod:`finetune.evaluation.plots`): matplotlib's object API (no global backend,
no figure registry), written to a temporary file and renamed, so a card never links to a
half-written picture.

For a multi-label model the diagram is binary: every (image, class) pair, binned by its
probability, against the share of those pairs that are positive (the pairs the multi-label
ECE is computed from, :func:`finetune.evaluation.calibration.binary_ece`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.evaluation import calibration
from finetune.evaluation.metrics import Predictions
from finetune.evaluation.multi_label_metrics import MultiLabelPredictions
from finetune.utils.files import replacing

NAME = "reliability.png"


def _multi_label_curves(predictions: MultiLabelPredictions) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    truth = predictions.truth.ravel()
    curves = []
    if predictions.uncalibrated_probs is not None:
        curves.append(("before temperature scaling", np.asarray(predictions.uncalibrated_probs).ravel(), truth, "#d95f02"))
        curves.append(("after (the saved model)", np.asarray(predictions.probs).ravel(), truth, "#1b9e77"))
    else:
        curves.append(("the saved model", np.asarray(predictions.probs).ravel(), truth, "#1b9e77"))
    return curves


def reliability_figure(predictions: Predictions | MultiLabelPredictions, title: str = ""):
    """The diagram of ``predictions``' top probabilities (every class's probability for a
    multi-label model); with the uncalibrated ones beside them when a temperature was folded
    into the model."""
    multi = isinstance(predictions, MultiLabelPredictions)
    if multi:
        curves = _multi_label_curves(predictions)
        pairs = len(curves[0][1])
        return _draw(curves, pairs, title or (
            f"Reliability: {predictions.num_images} images × {predictions.probs.shape[1]} classes, "
            f"{calibration.ECE_BINS} bins of each class's probability"
        ), "share of positive (image, class) pairs", "probability of the class", "share of pairs")
    correct = np.asarray(predictions.preds) == np.asarray(predictions.labels)
    curves = []
    if predictions.uncalibrated_confidence is not None:
        before = predictions.correct_before_calibration()
        curves.append(("before temperature scaling", predictions.uncalibrated_confidence, before, "#d95f02"))
        curves.append(("after (the saved model)", predictions.confidence, correct, "#1b9e77"))
    else:
        curves.append(("the saved model", predictions.confidence, correct, "#1b9e77"))
    return _draw(
        curves, len(correct), title or f"Reliability: {len(correct)} images, {calibration.ECE_BINS} bins of the top probability",
        "accuracy in the bin", "top probability (confidence)", "share of images",
    )


def _draw(curves, total: int, title: str, y_label: str, x_label: str, share_label: str):
    bins = calibration.ECE_BINS
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    width = 1.0 / bins / len(curves)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 6.4), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for i, (label, confidence, right, colour) in enumerate(curves):
        r = calibration.reliability(confidence, right, bins)
        offset = (i - (len(curves) - 1) / 2) * width
        shown = r.counts > 0
        top.bar(centres[shown] + offset, r.accuracy[shown], width=width, color=colour, alpha=0.8,
                label=f"{label}: ECE {r.ece:.3f}")
        bottom.bar(centres + offset, r.counts / max(total, 1), width=width, color=colour, alpha=0.8)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel(y_label)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title, fontsize=10)
    bottom.set_xlabel(x_label)
    bottom.set_ylabel(share_label)
    return fig


def write_reliability(out: Path, predictions: Predictions | MultiLabelPredictions, title: str = "") -> Path:
    """``out/reliability.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / NAME
    with replacing(path) as f:  # a link planted at the name is replaced, never followed
        reliability_figure(predictions, title).savefig(f, format="png", dpi=100)
    return path
