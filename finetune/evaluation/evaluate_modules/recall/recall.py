"""Recall as a local `evaluate` module (offline; by name, `evaluate.load` would fetch it from the Hub)."""

import datasets
import evaluate
from sklearn.metrics import recall_score

_DESCRIPTION = "Recall of a classifier, averaged over classes as asked (macro by default here)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    labels (list of int): the classes to average over (default: those present).
    average (str): 'macro', 'micro', 'weighted', 'binary' or None (per class).
    zero_division: the value where a class has no predictions (or no references).
Returns:
    recall (float, or list of float with average=None)
"""


class Recall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None, average="macro", zero_division=0):
        score = recall_score(references, predictions, labels=labels, average=average, zero_division=zero_division)
        return {"recall": score.tolist() if average is None else float(score)}
