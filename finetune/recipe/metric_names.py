"""The metrics a recipe may name, with their display names and their Hub model-index types."""

from __future__ import annotations

#: Metric names a recipe may list; :mod:`finetune.evaluation.metrics` computes each one.
KNOWN_METRICS = ("accuracy", "f1", "precision", "recall", "top5_accuracy")

#: Our metric names → the Hub's metric types (the model card's model-index).
HUB_TYPES = {
    "accuracy": "accuracy",
    "f1": "f1",
    "precision": "precision",
    "recall": "recall",
    "top5_accuracy": "top_k_accuracy",
}

#: Our metric names → how the model card shows them.
DISPLAY_NAMES = {
    "accuracy": "Accuracy",
    "f1": "F1 (macro)",
    "precision": "Precision (macro)",
    "recall": "Recall (macro)",
    "top5_accuracy": "Top-5 accuracy",
}
