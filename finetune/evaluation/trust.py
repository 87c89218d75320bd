"""How far to trust one evaluation's numbers: bootstrap intervals, calibration error and the abstention threshold, as flat metrics.

:func:`trust_metrics` turns one evaluation's predictions into the keys that join the
Trainer's metrics (``eval_results.json``: ``eval_accuracy_ci_low``, ``eval_ece``, …; an eval
set's ``NAME_*``; ``finetune eval``'s report); :func:`describe` is the line the terminal shows.
The interval is the uncertainty that comes from the finite set of test images: another draw
of as many images from the same source would score within it (95% of the time at the default
level). It says nothing of how much another training run (another seed) would move the score:
that is the seed spread that ``finetune study`` reports.

A multi-label evaluation gets the intervals of its metrics and the binary calibration error
over every (image, class) pair, but no abstention threshold: that threshold is a rule on the
top class's probability, and a multi-label model has no top class to abstain on; each class
has its own decision threshold, tuned on the validation piece, instead
(:data:`MULTI_LABEL_ABSTENTION`, which the report and the card state).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune.evaluation import calibration, intervals
from finetune.evaluation.metrics import Predictions
from finetune.evaluation.multi_label_metrics import MultiLabelPredictions
from finetune.recipe import EvaluationConfig
from finetune.recipe.metric_names import DISPLAY_NAMES

#: Why a multi-label evaluation has no abstention threshold (for the report and the card).
MULTI_LABEL_ABSTENTION = (
    "abstaining below a top probability is a single-label rule (one class per image), and a multi-label model has "
    "no top class to abstain on; each of its classes has its own decision threshold instead, tuned on the "
    "validation piece"
)


def trust_metrics(
    p: Predictions | MultiLabelPredictions, metrics: list[str], num_labels: int, cfg: EvaluationConfig | None = None
) -> dict[str, Any]:
    """The intervals of ``metrics``, the calibration error (before temperature scaling too,
    when ``p`` has it) and the abstention threshold, unprefixed: ``accuracy_ci_low``,
    ``accuracy_ci_high``, …, ``ci_level``, ``ci_resamples`` (and ``accuracy_ci_exact_low`` and
    ``_high``, the exact binomial interval, when every image is right or every one wrong and
    the bootstrap interval is a single point), ``ece``, ``ece_uncalibrated``,
    ``abstain_target_accuracy``, and ``abstain_threshold``, ``abstain_share`` and
    ``abstain_kept_accuracy`` when a threshold reaches the target. Multi-label ``p``: the
    intervals and the binary ECE over all (image, class) pairs, no abstention."""
    cfg = cfg or EvaluationConfig()
    out: dict[str, Any] = {}
    found = intervals.bootstrap(
        p, metrics, num_labels, level=cfg.ci_level, resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed
    )
    for name, interval in found.items():
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval.low, interval.high
    if found:
        out["ci_level"], out["ci_resamples"] = cfg.ci_level, cfg.bootstrap_resamples
    if isinstance(p, MultiLabelPredictions):
        if p.num_images:
            out["ece"] = calibration.binary_ece(p.probs, p.targets)
            if p.uncalibrated_probs is not None:
                out["ece_uncalibrated"] = calibration.binary_ece(p.uncalibrated_probs, p.targets)
        return out
    accuracy = found.get("accuracy")
    if accuracy is not None and accuracy.low == accuracy.high:
        # Every image right (or every one wrong): each resample scores the same, so the
        # bootstrap shows no uncertainty at all. The exact binomial interval still does.
        from scipy.stats import binomtest

        n = len(p.labels)
        exact = binomtest(int(round(accuracy.low * n)), n).proportion_ci(confidence_level=cfg.ci_level, method="exact")
        out["accuracy_ci_exact_low"], out["accuracy_ci_exact_high"] = float(exact.low), float(exact.high)
    if len(p.labels) == 0:
        return out
    correct = np.asarray(p.preds) == np.asarray(p.labels)
    out["ece"] = calibration.ece(p.confidence, correct)
    if p.uncalibrated_confidence is not None:
        out["ece_uncalibrated"] = calibration.ece(p.uncalibrated_confidence, p.correct_before_calibration())
    abstain = calibration.abstention_threshold(p.confidence, correct, cfg.abstain_accuracy)
    out["abstain_target_accuracy"] = cfg.abstain_accuracy
    if abstain.threshold is not None:
        out["abstain_threshold"] = abstain.threshold
        out["abstain_share"] = abstain.abstained
        out["abstain_kept_accuracy"] = abstain.accuracy
    return out


def prefixed(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``values`` under the Trainer's metric prefix (``eval_``, ``NAME_``)."""
    return {f"{prefix}_{k}": v for k, v in values.items()}


def interval_text(values: dict[str, Any], metric: str, prefix: str = "") -> str:
    """"95% CI 0.737–0.790", or "" without an interval for ``metric``."""
    key = f"{prefix}_{metric}" if prefix else metric
    low, high = values.get(f"{key}_ci_low"), values.get(f"{key}_ci_high")
    level = values.get(f"{prefix}_ci_level" if prefix else "ci_level")
    if low is None or high is None or level is None:
        return ""
    return f"{level * 100:g}% CI {low:.4f}–{high:.4f}"


def describe(values: dict[str, Any], metrics: list[str], prefix: str = "") -> str:
    """One line for the terminal: each metric with its interval, then the calibration error."""
    key = (lambda name: f"{prefix}_{name}") if prefix else (lambda name: name)
    parts = []
    for metric in metrics:
        if key(metric) not in values:
            continue
        ci = interval_text(values, metric, prefix)
        exact = values.get(key("accuracy_ci_exact_low")) if metric == "accuracy" else None
        if exact is not None:
            ci += f"; exact binomial {exact:.4f}–{values[key('accuracy_ci_exact_high')]:.4f}"
        parts.append(f"{DISPLAY_NAMES.get(metric, metric)} {values[key(metric)]:.4f}" + (f" ({ci})" if ci else ""))
    line = ", ".join(parts)
    if key("ece") in values:
        line += f"; ECE {values[key('ece')]:.4f}"
        if key("ece_uncalibrated") in values:
            line += f" ({values[key('ece_uncalibrated')]:.4f} before temperature scaling)"
    return line


#: The recipe's metric names → the names of ``eval_report.json`` (macro scores say so there).
REPORT_NAMES = {
    "accuracy": "accuracy",
    "f1": "macro_f1",
    "precision": "macro_precision",
    "recall": "macro_recall",
    "top5_accuracy": "top5_accuracy",
    "map": "map",
    "f1_micro": "f1_micro",
    "f1_macro": "f1_macro",
    "exact_match": "exact_match",
}


def report_fields(values: dict[str, Any], multi_label: bool = False) -> dict[str, Any]:
    """:func:`trust_metrics`' values as ``eval_report.json`` holds them: ``confidence_intervals``
    (level, resamples, NAME → [low, high]), ``ece`` (and ``ece_uncalibrated``) and ``abstention``
    (for a multi-label evaluation, why there is none)."""
    out: dict[str, Any] = {}
    found = {
        REPORT_NAMES[m]: [values[f"{m}_ci_low"], values[f"{m}_ci_high"]] for m in REPORT_NAMES if f"{m}_ci_low" in values
    }
    if found:
        out["confidence_intervals"] = {"level": values["ci_level"], "resamples": values["ci_resamples"], **found}
        if "accuracy_ci_exact_low" in values:
            out["confidence_intervals"]["accuracy_exact_binomial"] = [
                values["accuracy_ci_exact_low"], values["accuracy_ci_exact_high"]
            ]
    for key in ("ece", "ece_uncalibrated"):
        if key in values:
            out[key] = values[key]
    if "abstain_target_accuracy" in values:
        out["abstention"] = {
            "target_accuracy": values["abstain_target_accuracy"],
            "threshold": values.get("abstain_threshold"),
            "abstained_share": values.get("abstain_share"),
            "kept_accuracy": values.get("abstain_kept_accuracy"),
        }
    if multi_label:
        out["ece_kind"] = "binary, over every (image, class) pair"
        out["abstention"] = {"skipped": MULTI_LABEL_ABSTENTION}
    return out
