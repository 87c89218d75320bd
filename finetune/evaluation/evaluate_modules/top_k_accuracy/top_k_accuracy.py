"""Top-k accuracy as a local `evaluate` module (offline; by name, `evaluate.load` would fetch it from the Hub).

Takes the k best class indices per example rather than the full score matrix, so callers
can reduce logits batch by batch and never hold N×C scores in memory.
"""

import datasets
import evaluate

_DESCRIPTION = "Top-k accuracy: the share of examples whose true label is among the k best predictions."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of int): the k best class indices of each example, best first.
    references (list of int): true labels.
Returns:
    top_k_accuracy (float)
"""


class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        hits = sum(int(ref in preds) for preds, ref in zip(predictions, references))
        return {"top_k_accuracy": hits / len(references) if references else 0.0}
