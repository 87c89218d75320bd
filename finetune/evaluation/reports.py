"""What one evaluation writes, single-label or multi-label alike: the per-class report and the pictures, chosen by the kind of predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.evaluation import metrics, multi_label_metrics, multi_label_plots, plots
from finetune.evaluation.metrics import Predictions
from finetune.evaluation.multi_label_metrics import MultiLabelPredictions

#: Every picture an evaluation may write: a single-label one writes the first two, a
#: multi-label one the two of ``multi_label_plots.PICTURES``; both the training curves.
PICTURES = ("confusion_matrix.png", "misclassified.png", *multi_label_plots.PICTURES, "training_curves.png")


def pictures(multi_label: bool) -> tuple[str, ...]:
    """The pictures one evaluation writes: a multi-label one's, or a single-label one's."""
    kind = multi_label_plots.PICTURES if multi_label else PICTURES[:2]
    return (*kind, "training_curves.png")


def is_multi_label(predictions: Any) -> bool:
    return isinstance(predictions, MultiLabelPredictions)


def per_class_report(predictions: Predictions | MultiLabelPredictions, class_names: list[str]) -> dict[str, Any]:
    """``eval_report.json``'s per-class rows and overall scores (:mod:`finetune.evaluation.metrics`
    or :mod:`finetune.evaluation.multi_label_metrics`)."""
    if is_multi_label(predictions):
        return multi_label_metrics.per_class_report(predictions, class_names)
    return metrics.per_class_report(predictions, class_names)


def write_plots(
    out: Path, predictions: Predictions | MultiLabelPredictions, class_names: list[str], eval_dataset: Any,
    log_history: list[dict],
) -> None:
    """The evaluation's pictures in ``out`` (rows of ``eval_dataset`` in the order of ``predictions``)."""
    if is_multi_label(predictions):
        multi_label_plots.write_plots(out, predictions, class_names, eval_dataset, log_history)
    else:
        plots.write_plots(out, predictions, class_names, eval_dataset, log_history)
