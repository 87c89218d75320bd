"""The card's words on how far to trust its numbers: the intervals, the calibration and the abstention threshold.

Everything here reads what the run found (``eval_results.json``'s values and
``calibration.json``'s record) and says it in sentences for the template; nothing is
computed again.
"""

from __future__ import annotations

from typing import Any

from finetune.evaluation.trust import MULTI_LABEL_ABSTENTION
from finetune.recipe.metric_names import DISPLAY_NAMES


def interval(values: dict[str, Any], metric: str, prefix: str = "eval") -> str:
    """"0.7370–0.7900", or "" without an interval."""
    low, high = values.get(f"{prefix}_{metric}_ci_low"), values.get(f"{prefix}_{metric}_ci_high")
    return "" if low is None or high is None else f"{low:.4f}–{high:.4f}"


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _interval_sentence(values: dict[str, Any], metrics: list[str], eval_name: str) -> str | None:
    shown = [m for m in metrics if interval(values, m)]
    if not shown:
        return None
    first = shown[0]
    level, resamples = float(values["eval_ci_level"]), int(values["eval_ci_resamples"])
    n = int(values.get("eval_num_images", 0))
    return (
        f"{DISPLAY_NAMES[first]} {values[f'eval_{first}']:.4f} ({level * 100:g}% CI "
        f"{values[f'eval_{first}_ci_low']:.4f}–{values[f'eval_{first}_ci_high']:.4f}, {n:,} {eval_name} images). "
        f"The intervals are {level * 100:g}% bootstrap percentile intervals over {resamples:,} resamples of the "
        f"{n:,} images: how far each score could move with another draw of as many images like these. They do not "
        "include how much another training run (another seed, another draw of training images) would move it; "
        "`finetune study` measures that spread."
    ) + _exact_sentence(values, n, level)


def _exact_sentence(values: dict[str, Any], n: int, level: float) -> str:
    """When every image is right (or wrong) the bootstrap interval is one point; say so."""
    low, high = values.get("eval_accuracy_ci_exact_low"), values.get("eval_accuracy_ci_exact_high")
    if low is None or high is None:
        return ""
    every = "right" if values.get("eval_accuracy", 0) >= 0.5 else "wrong"
    return (
        f" Every one of the {n:,} images is {every}, so every resample scores the same and the bootstrap interval "
        f"is a single point, which understates the uncertainty: the exact binomial {level * 100:g}% interval of "
        f"the accuracy is {low:.4f}–{high:.4f}."
    )


def _calibration_text(
    calibration: dict[str, Any] | None, values: dict[str, Any], eval_name: str, on_validation: bool,
    multi_label: bool = False,
) -> str | None:
    if "eval_ece" not in values:
        return None
    bins = (calibration or {}).get("ece_bins", 15)
    binned = (
        f"{bins} equal-width bins of each class's probability, over every (image, class) pair" if multi_label
        else f"{bins} equal-width bins of the top probability"
    )
    ece = f"Expected calibration error (ECE: {binned}) on {eval_name}"
    t = (calibration or {}).get("temperature")
    if t is None:
        why = (calibration or {}).get("not_calibrated") or "calibration was off"
        return f"The probabilities are not temperature-scaled: {why}. {ece}: **{values['eval_ece']:.4f}**."
    tta = calibration.get("tta") or "none"
    activation = "sigmoid" if multi_label else "softmax"
    views = (
        f" (the {activation} averaged over the test-time views {tta}, as the scores here are)" if tta != "none" else ""
    )
    served = (
        "`finetune predict` on the run's folder returns the calibrated probabilities averaged over the same views; "
        "`pipeline()` and an ONNX export score one view, with the same T"
        if tta != "none" else
        "`pipeline()` and an ONNX export of this model return the calibrated probabilities as they are"
    )
    text = (
        f"The probabilities are temperature-scaled: T = {t:.4f}, fitted on the {calibration.get('validation_images', 0):,} "
        f"images of the validation piece{views}, is folded into the classifier head (its weight and bias divided by "
        f"T), so {served}. {ece}: "
        f"**{values.get('eval_ece_uncalibrated', values['eval_ece']):.4f} before, {values['eval_ece']:.4f} after**."
    )
    if on_validation:
        text += " T was fitted on these same images, so the ECE after scaling is optimistic."
    return text


def _abstention_text(values: dict[str, Any], eval_name: str, calibrated: bool, multi_label: bool = False) -> str | None:
    if multi_label:
        return f"A multi-label model gets no abstention threshold: {MULTI_LABEL_ABSTENTION}."
    target = values.get("eval_abstain_target_accuracy")
    if target is None:
        return None
    threshold = values.get("eval_abstain_threshold")
    if threshold is None:
        return (
            f"No threshold on the top probability keeps accuracy at {target:g} or more on {eval_name}: even its most "
            "confident images are right less often than that."
        )
    if threshold == 0:
        return (
            f"The model is at least {target:g} accurate on all of {eval_name} "
            f"({values.get('eval_accuracy', values.get('eval_abstain_kept_accuracy', 0)):.4f}): it need not abstain "
            "at that level."
        )
    probabilities = "calibrated probabilities" if calibrated else "probabilities"
    return (
        f"To keep accuracy at {target:g} or more on {eval_name}, leave the images whose top probability is below "
        f"**{threshold:.4f}** unlabelled (`finetune predict --min-probability {threshold:.4f}`): on {eval_name} that "
        f"abstains on {_percent(values['eval_abstain_share'])} of the images, and the others are "
        f"{_percent(values['eval_abstain_kept_accuracy'])} right. The threshold was read off {eval_name} itself (the "
        f"saved model's {probabilities}), so new images may need a slightly higher one."
    )


def context(
    values: dict[str, Any], calibration: dict[str, Any] | None, metrics: list[str], eval_name: str,
    on_validation: bool, has_reliability: bool, multi_label: bool = False,
) -> dict[str, Any]:
    """The template's variables: ``ci_header``, ``ci_note``, ``calibration_text``,
    ``has_reliability``, ``abstention_text``."""
    level = values.get("eval_ci_level")
    note = _interval_sentence(values, metrics, eval_name)
    calibrated = bool(calibration and calibration.get("temperature") is not None)
    return {
        "ci_header": f"{level * 100:g}% CI" if note else None,
        "ci_note": note,
        "calibration_text": _calibration_text(calibration, values, eval_name, on_validation, multi_label),
        "has_reliability": has_reliability,
        "abstention_text": _abstention_text(values, eval_name, calibrated, multi_label),
    }


def eval_set_cell(scores: dict[str, Any], name: str, metric: str) -> str | None:
    """A cell of the eval sets' table: "0.7640 (0.7370–0.7900)", or None when the set has no such score."""
    value = scores.get(f"{name}_{metric}")
    if value is None:
        return None
    ci = interval(scores, metric, name)
    return f"{float(value):.4f}" + (f" ({ci})" if ci else "")
