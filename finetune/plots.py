"""Report images (issue #4): confusion matrix, worst mistakes, training curves."""
# Implemented by the evaluation-report work; see write_plots' contract below.

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_plots(out: Path, predictions: Any, class_names: list[str], eval_dataset: Any, log_history: list[dict]) -> None:
    """Write confusion_matrix.png, misclassified.png and training_curves.png into ``out``."""
