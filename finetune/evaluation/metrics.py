"""Metrics through `evaluate`, accumulated batch by batch.

The Trainer keeps every eval logit in memory unless ``batch_eval_metrics`` is on; with it,
``MetricAccumulator`` is called once per (gathered) batch and keeps only a few integers and
two floats per image — never the N×C logits — so memory stays bounded on big eval sets.
A multi-label evaluation (``multi_label=True``) is the exception: average precision ranks
every image of a class, so it keeps the N×C sigmoid probabilities and targets
(:mod:`finetune.evaluation.multi_label_metrics`): 5 bytes per image and class (float32 and
uint8), 9 with a temperature folded in (the probabilities before it too).
The metric modules ship in ``evaluate_modules/`` because ``evaluate.load("accuracy")``
downloads from the Hub, which fails offline.

Macro (and weighted) averages run over the classes present in the evaluated set's true
labels: a class with no image there has no recall to measure, and counting it as 0 would
make a perfect model on a test set without class c score 2/3 with three classes. Its row
stays in the per-class report (support 0), and the report names it in ``absent_classes``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune.data.multi_label import DEFAULT_THRESHOLD
from finetune.evaluation import multi_label_metrics
from finetune.recipe.metric_names import MULTI_LABEL_METRICS, SINGLE_LABEL_METRICS

logger = logging.getLogger(__name__)

MODULE_DIR = Path(__file__).parent / "evaluate_modules"
TOP_K = 5
#: The label of rows that are not scored (padding of a streamed evaluation).
IGNORE_INDEX = -100
#: Up to this many classes ``eval_report.json`` holds the full C×C confusion matrix (at 1,000
#: a million counts, a few MB of JSON); above it the matrix is left out (``null``: at 20,000
#: classes it would be 400 million counts, more memory than the run had) and
#: ``top_confusions`` says what the model mixes up.
MAX_MATRIX_CLASSES = 1000
#: How many of the most frequent confusions ``eval_report.json`` lists.
TOP_CONFUSIONS = 50


@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """An `evaluate` module from the local folder (works with HF_HUB_OFFLINE=1)."""
    import evaluate

    return evaluate.load(str(MODULE_DIR / name))


@dataclass
class Predictions:
    """What one evaluation pass keeps per image (all arrays of length N)."""

    labels: np.ndarray  # true class
    preds: np.ndarray  # top-1 class
    topk: np.ndarray  # N×k best classes, best first
    confidence: np.ndarray  # probability of the predicted class
    true_prob: np.ndarray  # probability given to the true class
    #: The predicted class's probability before temperature scaling, when the model evaluated
    #: has a temperature folded into its head (``MetricAccumulator.temperature``); else None.
    uncalibrated_confidence: np.ndarray | None = None
    #: Whether the top class before temperature scaling was right, when it can differ from
    #: ``preds`` (probabilities averaged over test-time views); else None: as ``preds``.
    uncalibrated_correct: np.ndarray | None = None

    @property
    def num_images(self) -> int:
        return int(len(self.labels))

    def correct_before_calibration(self) -> np.ndarray:
        """Whether each image's top class before temperature scaling was right."""
        if self.uncalibrated_correct is not None:
            return np.asarray(self.uncalibrated_correct, dtype=bool)
        return np.asarray(self.preds) == np.asarray(self.labels)


def present_classes(labels: np.ndarray, num_labels: int) -> list[int]:
    """The classes that occur among the true labels: what macro averages run over.

    All classes when there is no label at all (nothing to tell apart, every score is 0).
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels[labels >= 0], minlength=num_labels)[:num_labels]
    present = np.flatnonzero(counts).tolist()
    return present or list(range(num_labels))


def compute(metrics: list[str], p: Predictions, num_labels: int) -> dict[str, float]:
    """The recipe's metrics, macro-averaged over the classes present in ``p.labels``."""
    preds, refs = p.preds.tolist(), p.labels.tolist()
    classes = present_classes(p.labels, num_labels)
    out: dict[str, float] = {}
    for name in metrics:
        if name == "accuracy":
            out[name] = load_metric("accuracy").compute(predictions=preds, references=refs)["accuracy"]
        elif name in ("f1", "precision", "recall"):
            out[name] = load_metric(name).compute(
                predictions=preds, references=refs, labels=classes, average="macro", zero_division=0
            )[name]
        elif name == "top5_accuracy" and num_labels > TOP_K:
            out[name] = load_metric("top_k_accuracy").compute(
                predictions=p.topk[:, :TOP_K].tolist(), references=refs
            )["top_k_accuracy"]
    return out


class MetricAccumulator:
    """``compute_metrics`` for a Trainer with ``batch_eval_metrics=True``.

    The Trainer calls it with each gathered batch (``accelerate``'s ``gather_for_metrics``
    already drops the samples repeated to pad the last batch across processes, so every
    eval image counts once) and ``compute_result=True`` on the last one.
    """

    def __init__(self, metrics: list[str], num_labels: int, multi_label: bool = False) -> None:
        #: Multi-label: the labels are N×C multi-hot rows, the probabilities sigmoids, and the
        #: N×C probabilities are kept (average precision ranks them), see
        #: :mod:`finetune.evaluation.multi_label_metrics`.
        self.multi_label = multi_label
        if multi_label and list(metrics) == list(SINGLE_LABEL_METRICS):
            metrics = list(MULTI_LABEL_METRICS)  # the recipe's default list, for multi-label data
        self.metrics = list(metrics)
        self.num_labels = num_labels
        self.last: Predictions | multi_label_metrics.MultiLabelPredictions | None = None
        #: Which gathered rows of the last evaluation were scored (see ``IGNORE_INDEX``).
        self.kept: np.ndarray | None = None
        #: The temperature folded into the evaluated model's head (its logits are the
        #: uncalibrated ones / T): the predicted class's probability before that division is
        #: kept too, for the calibration error before and after. None: nothing folded.
        self.temperature: float | None = None
        #: With a temperature: the logits before it come as the second output (averaged over
        #: test-time views, they are not the calibrated ones times T).
        self.uncalibrated_output = False
        #: Multi-label: each class's decision threshold (``DEFAULT_THRESHOLD`` until
        #: the run tunes them on the validation piece after training).
        self.thresholds = np.full(num_labels, DEFAULT_THRESHOLD)
        self._parts: list[tuple[np.ndarray, ...]] = []
        self._kept: list[np.ndarray] = []

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        outputs = eval_pred.predictions
        logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        logits = torch.as_tensor(logits).detach().float()
        if self.multi_label:
            return self._multi_label(outputs, logits, eval_pred.label_ids, compute_result)
        labels = torch.as_tensor(eval_pred.label_ids).detach().long()
        # Rows labelled -100 (the ignore index) are a streamed evaluation's padding, which
        # makes batches equal across processes, and its unreadable images: not scored.
        kept = labels != IGNORE_INDEX
        self._kept.append(kept.cpu().numpy())
        if not bool(kept.all()):
            logits, labels = logits[kept], labels[kept]
        probs = logits.softmax(-1)
        k = min(TOP_K, probs.shape[-1])
        top = probs.topk(k, dim=-1)
        part = (
            labels.cpu().numpy(),
            top.indices[:, 0].cpu().numpy(),
            top.indices.cpu().numpy(),
            top.values[:, 0].cpu().numpy(),
            probs.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1).cpu().numpy(),
        )
        if self.temperature is not None:
            if self.uncalibrated_output:
                # Averaged over views before T: its own top class, which T may have changed.
                before = torch.as_tensor(outputs[1]).detach().float()
                before = before if bool(kept.all()) else before[kept]
                raw, raw_top = before.softmax(-1).max(-1)
                part += (raw.cpu().numpy(), (raw_top == labels).cpu().numpy())
            else:
                # The same top class: a positive temperature keeps the order of the logits.
                raw = (logits * self.temperature).softmax(-1).gather(1, top.indices[:, :1]).squeeze(1)
                part += (raw.cpu().numpy(),)
        columns = self._collect(part, compute_result)
        if columns is None:
            return {}
        self.last = Predictions(*columns)
        out = compute(self.metrics, self.last, self.num_labels)
        out["num_images"] = int(len(self.last.labels))
        return out

    def _collect(self, part: tuple[np.ndarray, ...], compute_result: bool) -> list[np.ndarray] | None:
        """Keep one gathered batch's arrays; on the last batch, every batch's, joined (and
        ``kept`` set), for the scores. None before the last batch."""
        self._parts.append(part)
        if not compute_result:
            return None
        columns = [np.concatenate(col) for col in zip(*self._parts)]
        self.kept = np.concatenate(self._kept)
        self._parts, self._kept = [], []
        return columns

    def _multi_label(self, outputs: Any, logits: torch.Tensor, label_ids: Any, compute_result: bool) -> dict[str, float]:
        """One batch of a multi-label evaluation: the sigmoid probabilities and the targets of
        the rows that are images (a padding row is ``multi_label.IGNORE_VALUE`` throughout)."""
        targets = torch.as_tensor(label_ids).detach().float()
        kept = torch.as_tensor(multi_label_metrics.keep_rows(targets.cpu().numpy()))
        self._kept.append(kept.numpy())
        if not bool(kept.all()):
            logits, targets = logits[kept.to(logits.device)], targets[kept.to(targets.device)]
        part: tuple[np.ndarray, ...] = (logits.sigmoid().cpu().numpy(), (targets > 0.5).cpu().numpy().astype(np.uint8))
        if self.temperature is not None:
            if self.uncalibrated_output:
                # Averaged over views before T: the mean sigmoid, not the calibrated logits times T.
                before = torch.as_tensor(outputs[1]).detach().float()
                before = before if bool(kept.all()) else before[kept.to(before.device)]
            else:
                before = logits * self.temperature
            part += (before.sigmoid().cpu().numpy(),)
        columns = self._collect(part, compute_result)
        if columns is None:
            return {}
        probs, targets_np = columns[0], columns[1]
        self.last = multi_label_metrics.MultiLabelPredictions(
            probs, targets_np, np.asarray(self.thresholds, dtype=np.float64).copy(),
            columns[2] if len(columns) > 2 else None,
        )
        out = multi_label_metrics.compute(self.metrics, self.last)
        out["num_images"] = self.last.num_images
        return out


def top_confusions(p: Predictions, names: list[str], limit: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    """The ``limit`` most frequent mistakes as (true class, predicted class) pairs, most
    frequent first (ties: by class index), each with its count and its share of the true
    class's images. Counted from the mistakes alone, in memory linear in the images and
    classes (never a C×C array)."""
    n = len(names)
    labels = np.asarray(p.labels, dtype=np.int64)
    preds = np.asarray(p.preds, dtype=np.int64)
    wrong = (labels >= 0) & (labels != preds)
    pairs, counts = np.unique(labels[wrong] * n + preds[wrong], return_counts=True)
    order = np.lexsort((pairs, -counts))[:limit]
    support = np.bincount(labels[labels >= 0], minlength=n)
    out = []
    for pair, count in zip(pairs[order].tolist(), counts[order].tolist()):
        true, predicted = divmod(pair, n)
        out.append(
            {"true": names[true], "predicted": names[predicted], "count": count, "share_of_true": count / support[true]}
        )
    return out


def per_class_report(p: Predictions, names: list[str]) -> dict[str, Any]:
    """Per-class precision/recall/F1/support plus overall scores, for ``eval_report.json``.

    Every class has a row; the macro and weighted means leave out the classes with no
    image in the evaluated set, which ``absent_classes`` names (and one warning logs).
    ``confusion_matrix`` is the C×C counts up to :data:`MAX_MATRIX_CLASSES` classes, else
    None; ``top_confusions`` (:func:`top_confusions`) is there for any number of classes.
    """
    from sklearn.metrics import confusion_matrix

    preds, refs = p.preds.tolist(), p.labels.tolist()
    classes = list(range(len(names)))
    present = present_classes(p.labels, len(names))
    absent = [names[c] for c in classes if c not in set(present)]
    if absent:
        logger.warning(
            "%d class(es) have no image in the evaluated set: %s%s; macro and weighted scores average over the "
            "%d class(es) present",
            len(absent), ", ".join(absent[:20]), f" and {len(absent) - 20} more (absent_classes in the report)"
            if len(absent) > 20 else "", len(present),
        )
    if len(names) > MAX_MATRIX_CLASSES:
        logger.info(
            "report: %d classes, more than %d: eval_report.json lists the %d most frequent confusions "
            "(top_confusions) instead of the full confusion matrix",
            len(names), MAX_MATRIX_CLASSES, TOP_CONFUSIONS,
        )
    per: dict[str, list[float]] = {}
    for name in ("precision", "recall", "f1"):
        per[name] = load_metric(name).compute(
            predictions=preds, references=refs, labels=classes, average=None, zero_division=0
        )[name]
    support = np.bincount(p.labels, minlength=len(names)).tolist()
    weighted_f1 = load_metric("f1").compute(
        predictions=preds, references=refs, labels=present, average="weighted", zero_division=0
    )["f1"]
    report: dict[str, Any] = {
        "num_images": len(refs),
        "accuracy": load_metric("accuracy").compute(predictions=preds, references=refs)["accuracy"],
        "macro_f1": float(np.mean([per["f1"][c] for c in present])),
        "weighted_f1": weighted_f1,
        "macro_precision": float(np.mean([per["precision"][c] for c in present])),
        "macro_recall": float(np.mean([per["recall"][c] for c in present])),
        "absent_classes": absent,
        "per_class": {
            names[c]: {
                "precision": per["precision"][c],
                "recall": per["recall"][c],
                "f1": per["f1"][c],
                "support": support[c],
            }
            for c in classes
        },
        "confusion_matrix": (
            confusion_matrix(refs, preds, labels=classes).tolist() if len(names) <= MAX_MATRIX_CLASSES else None
        ),
        "top_confusions": top_confusions(p, names),
    }
    if len(names) > TOP_K:
        report["top5_accuracy"] = load_metric("top_k_accuracy").compute(
            predictions=p.topk[:, :TOP_K].tolist(), references=refs
        )["top_k_accuracy"]
    return report
