"""Temperature scaling in a training run: decided before training, fitted on the validation piece after it, folded into the saved head.

Before training (:func:`plan`) the run decides whether it can calibrate: it needs a
validation piece, whole (not sharded) weights, and a head found as the linear probe finds
it (:func:`finetune.probe.features.find_head`, the model's last ``nn.Linear``) whose output
is the model's logits (:func:`finetune.models.temperature.output_is_logits`). Where it cannot,
``evaluation.calibrate: true`` stops the run with one line before any training time is
spent, and the default (null) goes on uncalibrated, saying why in the log and the card.

After training (:func:`fit`) the validation piece's logits (never the eval split's) give T
(:func:`finetune.evaluation.calibration.fit_temperature`); with test-time views
(``evaluation.tta``) each view's logits, so that T calibrates the softmax averaged over them,
which is what the final scores, the abstention threshold and ``predict --tta`` read. The saved model gets T folded into
its head (for LoRA: into the merged copy that is saved); the final evaluation runs with T
folded into the live model (:func:`folded`) and the weights come back bit for bit afterwards,
so the checkpoints a rerun resumes from stay uncalibrated and a rerun fits and folds T once
again from them, never twice.

A multi-label model (:func:`finetune.data.multi_label.is_multi_label` of its config) gets one
T fitted by the binary cross-entropy of its sigmoids over every (image, class) pair of the
validation piece (:func:`finetune.evaluation.calibration.fit_binary_temperature`), folded the
same way; its per-class thresholds are tuned after it, on the calibrated probabilities.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune import data
from finetune.data import multi_label
from finetune.evaluation import calibration, metrics, multi_label_metrics
from finetune.models import temperature as head_temperature
from finetune.probe.features import find_head
from finetune.training.run_state import Run
from finetune.utils.devices import sharded
from finetune.utils.errors import ModelError, UserError

logger = logging.getLogger("finetune")

#: The file the output folder gets: the temperature, what it was fitted on, the ECE before and after.
CALIBRATION_FILE = "calibration.json"


class CalibrationError(UserError):
    """``evaluation.calibrate: true`` on a run that cannot be calibrated."""


@dataclass
class Plan:
    """Whether the run calibrates, and why not when it does not."""

    on: bool
    #: Why the run does not calibrate (for the log and the card); None when it does.
    reason: str | None = None
    #: The head's module name (as in the model's state dict).
    head: str | None = None


def _why_not(run: Run, size: tuple[int, int]) -> tuple[str | None, str | None]:
    """(the reason the run cannot calibrate or None, the head's name)."""
    if run.prepared is None or run.prepared.validation is None or len(run.prepared.validation) == 0:
        return "there is no validation piece to fit the temperature on (data.validation_fraction is 0)", None
    if sharded(run.args):
        return "FSDP and DeepSpeed shard the head's weights, which folding a temperature needs whole", None
    model = run.loaded.model
    try:
        name, head = find_head(model)
    except ModelError:
        return "the model has no Linear classification head to fold a temperature into", None
    if not head_temperature.output_is_logits(model, head, size):
        return (
            f"its last Linear layer ({name}) is not the whole head: something follows it before the logits "
            "(e.g. an averaged distillation head), so dividing it by T would not divide the logits", name,
        )
    return None, name


def plan(run: Run, size: tuple[int, int]) -> Plan:
    """Before training: whether this run calibrates (``evaluation.calibrate``: null, on where
    it can; true, on or a one-line error; false, off)."""
    setting = run.recipe.evaluation.calibrate
    if setting is False:
        return Plan(False, "evaluation.calibrate is false")
    reason, head = _why_not(run, size)
    if reason is None:
        return Plan(True, None, head)
    if setting is True:
        raise CalibrationError(
            f"evaluation.calibrate: true, but {reason}; set evaluation.calibrate to null (calibrate where it can) "
            "or false"
        )
    logger.info("calibration: off: %s", reason)
    return Plan(False, reason, head)


def is_multi_label(run: Run) -> bool:
    """Whether the run's model is multi-label (its config's ``problem_type``)."""
    return multi_label.is_multi_label(run.loaded.model.config)


def predict_validation(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """The validation piece's logits (N×C) as the trainer scores it now, and its labels (N
    classes, or N×C multi-hot rows)."""
    output = run.trainer.predict(data.FastRows.wrap(run.prepared.validation), metric_key_prefix="calibration")
    logits = output.predictions[0] if isinstance(output.predictions, (tuple, list)) else output.predictions
    logits, labels = np.asarray(logits, dtype=np.float32), np.asarray(output.label_ids)
    # A streamed piece's padding (equal batches across processes) and unreadable images are
    # labelled with the ignore index: not images to fit on.
    kept = multi_label_metrics.keep_rows(labels) if labels.ndim == 2 else labels != metrics.IGNORE_INDEX
    return logits[kept], labels[kept]


def view_logits(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """The validation piece's logits, N×C, or N×V×C over the V test-time views the final
    scores average (the trainer's ``tta``): one prediction pass per view, so that T is fitted
    to the averaged softmax the final scores read."""
    tta = getattr(run.trainer, "tta", None)
    if tta is None or len(tta.views) == 1:
        return predict_validation(run)
    per_view, labels = [], None
    try:
        for one in tta.each_view():
            run.trainer.tta = one
            logits, labels = predict_validation(run)
            per_view.append(logits)
    finally:
        run.trainer.tta = tta
    return np.stack(per_view, axis=1), labels


def fit(run: Run) -> calibration.TemperatureFit:
    """T fitted on the validation piece's logits (over the final scores' test-time views; the
    eval split is not read). Every process gets the same gathered logits, so the same T."""
    logits, labels = view_logits(run)
    multi = labels.ndim == 2  # multi-hot rows: a multi-label model's sigmoids
    result = (calibration.fit_binary_temperature if multi else calibration.fit_temperature)(logits, labels)
    average = "sigmoid" if multi else "softmax"
    views = f", the {average} averaged over {logits.shape[1]} test-time views" if logits.ndim == 3 else ""
    if result.temperature is None:
        logger.warning("calibration: skipped: on the validation piece%s, %s", views, result.reason)
    else:
        logger.info(
            "calibration: temperature T = %.4f fitted on the %d images of the validation piece%s (%s "
            "%.4f → %.4f); folded into the saved head",
            result.temperature, result.num_images, views,
            "binary cross-entropy" if multi else "negative log-likelihood", result.nll_before, result.nll_after,
        )
    return result


def live_head(run: Run):
    """The head of the model being trained, as the trainer runs it (the probe's head trains the
    full model's Linear in place; LoRA's active copy of the head)."""
    return find_head(run.loaded.model)[1]


@contextlib.contextmanager
def folded(run: Run, temperature: float | None) -> Iterator[None]:
    """The block (the final evaluation) runs with ``temperature`` folded into the live head,
    and the accumulator also keeps the probabilities before it; both are put back after."""
    if temperature is None:
        yield
        return
    run.accumulator.temperature = temperature
    # Over several views the uncalibrated average is not the calibrated one's logits times T:
    # the views' probabilities before T are averaged too, and come as a second output.
    tta = getattr(run.trainer, "tta", None)
    views = tta is not None and len(tta.views) > 1
    if views:
        tta.temperature = temperature
        run.accumulator.uncalibrated_output = True
    try:
        with head_temperature.folded(live_head(run), temperature):
            yield
    finally:
        run.accumulator.temperature = None
        run.accumulator.uncalibrated_output = False
        if views:
            tta.temperature = None


def record(
    plan_: Plan, fitted: calibration.TemperatureFit | None, eval_name: str, final: dict[str, Any], tta: str = "none",
    multi: bool = False,
) -> dict[str, Any]:
    """What ``calibration.json`` holds and the card shows (``tta``: the test-time views that
    the fit and the eval split's numbers averaged over; ``multi``: a multi-label model, T fitted by binary
    cross-entropy, the ECE over every (image, class) pair)."""
    out: dict[str, Any] = {
        "temperature": fitted.temperature if fitted is not None else None,
        "fitted_on": "the validation piece",
        "tta": tta,
        "head": plan_.head,
        "eval_split": eval_name,
        "ece_bins": calibration.ECE_BINS,
        "ece": final.get("eval_ece"),
        "ece_uncalibrated": final.get("eval_ece_uncalibrated", final.get("eval_ece")),
    }
    if multi:
        out["fitted_by"] = "binary cross-entropy of every class's sigmoid"
        out["ece_kind"] = "binary, over every (image, class) pair"
    if fitted is not None:
        out.update(
            validation_images=fitted.num_images,
            validation_nll_before=fitted.nll_before,
            validation_nll_after=fitted.nll_after,
        )
    reason = plan_.reason if fitted is None else (f"on the validation piece, {fitted.reason}" if fitted.reason else None)
    if reason is not None:
        out["not_calibrated"] = reason
    return out
