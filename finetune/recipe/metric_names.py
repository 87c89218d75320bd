"""The metrics a recipe may name, with their display names and their Hub model-index types."""

from __future__ import annotations

#: What a single-label run computes (the recipe's ``metrics`` default).
SINGLE_LABEL_METRICS = ("accuracy", "f1", "precision", "recall", "top5_accuracy")
#: What a multi-label run computes (its ``metrics`` when the recipe leaves the default):
#: mean average precision over the classes with a positive image, micro and macro F1 at the
#: tuned thresholds, and the share of images with every label right.
MULTI_LABEL_METRICS = ("map", "f1_micro", "f1_macro", "exact_match")
#: Metric names a recipe may list; :mod:`finetune.evaluation.metrics` computes each one.
KNOWN_METRICS = SINGLE_LABEL_METRICS + MULTI_LABEL_METRICS

#: Our metric names → the Hub's metric types (the model card's model-index).
HUB_TYPES = {
    "accuracy": "accuracy",
    "f1": "f1",
    "precision": "precision",
    "recall": "recall",
    "top5_accuracy": "top_k_accuracy",
    "map": "mean_average_precision",
    "f1_micro": "f1_micro",
    "f1_macro": "f1_macro",
    "exact_match": "exact_match",
}

#: Our metric names → how the model card shows them.
DISPLAY_NAMES = {
    "accuracy": "Accuracy",
    "f1": "F1 (macro)",
    "precision": "Precision (macro)",
    "recall": "Recall (macro)",
    "top5_accuracy": "Top-5 accuracy",
    "map": "mAP (macro)",
    "f1_micro": "F1 (micro)",
    "f1_macro": "F1 (macro)",
    "exact_match": "Exact match (all labels right)",
}
