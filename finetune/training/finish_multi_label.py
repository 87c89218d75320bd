"""A multi-label run after training: its per-class decision thresholds, tuned on the validation piece before the model is saved, and what the report and the card say of them.

The validation piece is scored once more, by the model as it is saved (the temperature
folded in, when one was fitted; over the final scores' test-time views), and each class's
threshold is the one that maximises its F1 there (:mod:`finetune.evaluation.thresholds`).
They go into the model's config (``multi_label.set_thresholds``), so config.json carries them
to ``finetune predict``, ``finetune eval`` and the ONNX export, and into the metric
accumulator, so the final evaluation (the eval split, the eval sets) is scored at them. The
eval split is never read for them. Without a validation piece every class keeps
``multi_label.DEFAULT_THRESHOLD``, and the card says so.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.special import expit

from finetune.data import multi_label
from finetune.evaluation import thresholds
from finetune.training import calibrate
from finetune.training.run_state import Run

logger = logging.getLogger("finetune")

#: The tie rule of the threshold search, for the report.
TIE_RULE = (
    "the F1-maximising cut of the validation piece's probabilities, halfway between the lowest probability it "
    "labels and the next lower one; ties go to the lowest such threshold"
)


def _configs(run: Run) -> list[Any]:
    """The configs of the models the run saves or scores (the full model, and the trainer's own
    when it is another object), each once."""
    models = [run.loaded.model]
    trainer = run.trainer
    if trainer is not None and getattr(trainer, "accelerator", None) is not None:
        models.append(trainer.accelerator.unwrap_model(trainer.model))
    configs: list[Any] = []
    for model in models:
        config = getattr(model, "config", None)
        if config is not None and all(config is not seen for seen in configs):
            configs.append(config)
    return configs


def apply(run: Run, class_names: list[str], values: np.ndarray) -> None:
    """Set the thresholds on the model's config (config.json, once saved) and on the metric
    accumulator (the final scores)."""
    for config in _configs(run):
        multi_label.set_thresholds(config, class_names, [float(v) for v in values])
    run.accumulator.thresholds = np.asarray(values, dtype=np.float64)


def tune(run: Run, temperature: float | None) -> thresholds.ThresholdFit:
    """Tune, store and log the thresholds; call it on every process (the validation piece's
    predictions are gathered across them, so each gets the same thresholds) before the model is saved."""
    names = list(run.prepared.splits.class_names)
    validation = run.prepared.validation
    if validation is None or len(validation) == 0:
        fit = thresholds.fixed(len(names), "there is no validation piece (data.validation_fraction is 0)")
    else:
        # The probabilities of the model as saved: T folded in, over the final scores' views.
        with calibrate.folded(run, temperature):
            logits, targets = calibrate.predict_validation(run)
        fit = thresholds.tune(expit(logits.astype(np.float64)), targets)
    apply(run, names, fit.values)
    if fit.reason is not None:
        logger.warning("thresholds: every class at %g: %s", multi_label.DEFAULT_THRESHOLD, fit.reason)
    else:
        untuned = [names[c] for c in fit.untuned]
        logger.info(
            "thresholds: tuned per class on the %d images of the validation piece (F1 there: mean %.4f over %d "
            "class(es))%s; saved in config.json",
            fit.num_images, float(np.nanmean(fit.f1)) if fit.tuned.any() else 0.0, int(fit.tuned.sum()),
            f"; {len(untuned)} class(es) with no positive image there keep {multi_label.DEFAULT_THRESHOLD:g}: "
            f"{', '.join(untuned[:10])}{' …' if len(untuned) > 10 else ''}" if untuned else "",
        )
    return fit


def record(fit: thresholds.ThresholdFit, class_names: list[str]) -> dict[str, Any]:
    """The thresholds as ``eval_report.json`` and the card state them."""
    return {
        "source": "validation" if fit.reason is None else "default",
        "validation_images": fit.num_images,
        "rule": TIE_RULE if fit.reason is None else f"every class at {multi_label.DEFAULT_THRESHOLD:g}: {fit.reason}",
        "default": multi_label.DEFAULT_THRESHOLD,
        "untuned_classes": [class_names[c] for c in fit.untuned],
        "values": {name: float(v) for name, v in zip(class_names, fit.values)},
        "validation_f1": {
            name: None if np.isnan(f) else float(f) for name, f in zip(class_names, fit.f1)
        },
    }
