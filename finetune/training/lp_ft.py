"""LP-FT's linear-probe phase: the head fitted on cached features of the frozen backbone, kept in the output folder, before the full fine-tune starts from it.

``model.strategy: lp_ft`` (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features
and Underperform Out-of-Distribution"): a fine-tune that starts from a random head sends
large, random gradients into the backbone in its first steps, and distorts the features
it was chosen for. Fitting the head first, with the backbone frozen, and fine-tuning
everything from there avoids that. The probe is the cached-feature probe of
``model.strategy: linear_probe`` (:mod:`finetune.probe`): the backbone runs once over the
train split and the validation piece (never the eval split), and the head is fitted by
``model.probe_solver``: L-BFGS over ``model.probe_l2`` (λ chosen on the validation piece),
or the Trainer for ``model.lp_epochs`` epochs with the ``training`` block's optimizer,
learning rate and batch size. Its features are of the un-augmented images; the fine-tune
phase then trains with the recipe's augmentation and ``training`` block, as ``full`` does.

The fitted head is written once, atomically, to ``lp_head.safetensors`` in the output
folder (its settings and results in the file's metadata). A run resumed after SIGTERM or
kill -9 loads it instead of fitting again: a checkpoint already holds the head, and before
the first checkpoint the fine-tune must start from the very same head for the resumed run
to end where an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from finetune import data
from finetune.data import multi_label
from finetune.evaluation import metrics
from finetune.models.classifier import ModelError
from finetune.probe.features import find_head
from finetune.recipe import FINETUNE_TRAINING_KEYS, Recipe
from finetune.training import run_files
from finetune.training.arguments import training_arguments
from finetune.training.interrupts import signal_name
from finetune.training.output_dir import LP_HEAD, last_complete_checkpoint
from finetune.utils.files import write_bytes

logger = logging.getLogger("finetune")

#: ``training`` keys of the fine-tune alone: the probe phase trains for ``model.lp_epochs``,
#: saves no checkpoint and selects nothing (its head is the last one, or L-BFGS's choice).
_FINE_TUNE_ONLY = (
    "num_train_epochs", "max_steps", "save_strategy", "save_steps", "save_total_limit", "save_only_model",
    "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "eval_strategy", "eval_steps",
    "resume_from_checkpoint", *FINETUNE_TRAINING_KEYS,
)
_METADATA_KEY = "finetune_lp_phase"


def _probe_training(recipe: Recipe) -> dict[str, Any]:
    """The ``training`` block of the probe phase."""
    has_validation = recipe.data.validation_fraction > 0
    kept = {k: v for k, v in recipe.training.items() if k not in _FINE_TUNE_ONLY}
    return kept | {
        "num_train_epochs": recipe.model.lp_epochs,
        "save_strategy": "no",
        "eval_strategy": "epoch" if has_validation else "no",
    }


def _fingerprint(recipe: Recipe) -> str:
    """What the saved head was fitted for: the recipe, less what does not change training."""
    settings = {k: v for k, v in recipe.to_dict().items() if k not in ("hub", "output_dir")}
    return json.dumps(settings, sort_keys=True, default=str)


def settings(recipe: Recipe, args: Any | None = None) -> dict[str, Any]:
    """The probe phase's settings, for the log, the saved head and the card."""
    m = recipe.model
    if m.probe_solver == "lbfgs":
        return {"solver": "lbfgs", "probe_l2": list(m.probe_l2), "probe_max_iter": m.probe_max_iter}
    out = {"solver": "trainer", "lp_epochs": m.lp_epochs}
    if args is not None:
        out |= {"learning_rate": args.learning_rate, "optim": str(getattr(args.optim, "value", args.optim)),
                "per_device_train_batch_size": args.per_device_train_batch_size}
    return out


def load_saved(out: Path, recipe: Recipe, head: torch.nn.Linear) -> dict[str, Any] | None:
    """The probe phase of an earlier attempt of this recipe in ``out``: its record, with the
    head's tensors under ``"tensors"``; None when there is none (or it is not this recipe's)."""
    from safetensors import safe_open

    path = out / LP_HEAD
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            record = json.loads((f.metadata() or {})[_METADATA_KEY])
            tensors = {k: f.get_tensor(k) for k in ("weight", "bias")}
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # cut off or foreign: fit again
        logger.warning("LP-FT: %s is unreadable (%s); the linear probe is fitted again", path, err)
        return None
    if record.get("recipe") != _fingerprint(recipe) or tensors["weight"].shape != head.weight.shape:
        logger.warning("LP-FT: %s was fitted for another recipe; the linear probe is fitted again", path)
        return None
    return record | {"tensors": tensors}


def _save(out: Path, record: dict[str, Any], head: torch.nn.Linear) -> None:
    """The head and its record, written to a temporary file and renamed: never half a file."""
    from safetensors.torch import save

    tensors = {"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()}
    run_files.record(out, LP_HEAD)
    write_bytes(out / LP_HEAD, save(tensors, metadata={_METADATA_KEY: json.dumps(record, default=str)}))


def probe_phase(
    recipe: Recipe, loaded: Any, transform: data.BatchTransform, prepared: Any, out: Path, state: Any,
    solving: Callable[[], AbstractContextManager] = nullcontext,
) -> dict[str, Any]:
    """Fit the head of ``loaded.model`` in place by a linear probe on cached features, or
    load the one an earlier attempt of this recipe fitted; returns the phase's record
    (``settings``, ``metrics``, ``head``, ``reused``). ``solving()`` is entered around the
    fit itself, after the feature pass (a signal then lets the fit end and its head be saved).

    ``prepared`` gives the train split and the validation piece; the eval split is never
    looked at. Every process fits the same head (the L-BFGS head is rank 0's, broadcast);
    the main process decides whether a saved one is reused, and writes a new one.
    """
    try:
        head_name, head = find_head(loaded.model)
    except ModelError as err:
        raise _for_lp_ft(err) from None
    saved = load_saved(out, recipe, head) if state.is_main_process else None
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        (saved,) = broadcast_object_list([saved])
    if saved is not None:
        with torch.no_grad():
            head.weight.copy_(saved["tensors"]["weight"])
            head.bias.copy_(saved["tensors"]["bias"])
        record = {k: v for k, v in saved.items() if k != "tensors"} | {"reused": True}
        logger.info(
            "LP-FT: the linear-probe phase ran before; its head (%s) is loaded from %s, not fitted again",
            head_name, out / LP_HEAD,
        )
        return record
    try:
        record = _fit(recipe, loaded, transform, prepared, head_name, solving)
    except ModelError as err:
        raise _for_lp_ft(err) from None
    if state.is_main_process:
        _save(out, record | {"recipe": _fingerprint(recipe)}, head)
    state.wait_for_everyone()
    logger.info("LP-FT: the probed head is saved in %s; a rerun of this recipe reuses it", out / LP_HEAD)
    return record | {"reused": False}


def _for_lp_ft(err: ModelError) -> ModelError:
    """The probe's refusal of a model (no Linear head, or work after it), with lp_ft's fix:
    turning the feature cache off is no way out here."""
    reason = str(err).split(";")[0].replace("model.feature_cache", "model.strategy 'lp_ft'", 1)
    return ModelError(f"{reason}; its linear probe needs the head to be the model's last step: use strategy 'full'")


def _fit(
    recipe: Recipe, loaded: Any, transform: data.BatchTransform, prepared: Any, head_name: str,
    solving: Callable[[], AbstractContextManager] = nullcontext,
) -> dict[str, Any]:
    from finetune.probe.head import FeatureProbeTrainer

    args = training_arguments(dataclasses.replace(recipe, training=_probe_training(recipe)), "recipe")
    phase = settings(recipe, args)
    shown = (
        f"L-BFGS, λ among {phase['probe_l2']}" if phase["solver"] == "lbfgs"
        else f"the Trainer, {phase['lp_epochs']:g} epochs at learning rate {phase['learning_rate']:g} ({phase['optim']})"
    )
    logger.info(
        "LP-FT: linear-probe phase: the head (%s) is fitted by %s on cached features of the frozen backbone "
        "(train split and validation piece, without augmentation; the eval split is not used)",
        head_name, shown,
    )
    # The backbone is not frozen (the fine-tune trains it), but the probe never computes
    # its gradients: the cached features come from an inference-mode pass.
    rows = data.FastRows.wrap
    trainer = FeatureProbeTrainer(
        model=loaded.model,
        args=args,
        train_dataset=rows(prepared.train),
        eval_dataset=rows(prepared.validation),
        compute_metrics=metrics.MetricAccumulator(
            recipe.metrics, len(prepared.splits.class_names), multi_label=prepared.splits.multi_label),
        batch_transform=transform.without_augmentation(),
        solver=recipe.model.probe_solver,
        l2=list(recipe.model.probe_l2),
        max_iter=recipe.model.probe_max_iter,
        runtime=recipe.model.feature_runtime,
    )
    with solving():
        result = trainer.train()
    scores = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}
    # What the probe is scored by on the validation piece: accuracy, or mAP for multi-label data.
    name = "map" if multi_label.is_multi_label(loaded.model.config) else "accuracy"
    validation = [e for e in trainer.state.log_history if f"eval_{name}" in e]
    if validation:  # the Trainer solver's last per-epoch score on the validation piece
        scores[f"validation_{name}"] = validation[-1][f"eval_{name}"]
    elif f"probe_validation_{name}" in scores:
        scores[f"validation_{name}"] = scores.pop(f"probe_validation_{name}")
    record = {"head": head_name, "settings": phase, "metrics": scores, "multi_label": name == "map"}
    del trainer
    gc.collect()
    logger.info("LP-FT: linear-probe phase done: %s", ", ".join(f"{k} {v}" for k, v in scores.items()))
    return record


def stopped_after_probe(out: Path, signum: int) -> str:
    """The one line for a signal that arrived during the probe phase (which runs to its end)."""
    last = last_complete_checkpoint(out, quiet=True)
    rerun = f"it resumes from {last}" if last else "it fine-tunes from that head"
    return (
        f"stopped by {signal_name(signum)} after the linear-probe phase of lp_ft: its head is saved in "
        f"{out / LP_HEAD}; run the same command again to continue: {rerun}"
    )


def train_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The probe phase's numbers for ``train_results.json``, each prefixed ``lp_``."""
    out: dict[str, Any] = {"lp_solver": record["settings"]["solver"]}
    for key, value in record["metrics"].items():
        if key != "probe_solver":
            out["lp_" + key.removeprefix("probe_")] = value
    return out


def card_lines(record: dict[str, Any]) -> list[str]:
    """How the model card states the probe phase: what fitted the head, with which settings,
    and how it scored."""
    s, scores = record["settings"], record["metrics"]
    multi = bool(record.get("multi_label"))
    if s["solver"] == "lbfgs":
        kind = "one-vs-rest" if multi else "multinomial"
        how = (
            f"L-BFGS {kind} logistic regression, L2 strength λ {scores.get('probe_l2')} "
            f"(tried: {', '.join(f'{v:g}' for v in s['probe_l2'])}), up to {s['probe_max_iter']} iterations each"
        )
    else:
        how = (
            f"the Trainer, {s['lp_epochs']:g} epochs, learning rate {s.get('learning_rate')}, "
            f"optimizer {s.get('optim')}, batch {s.get('per_device_train_batch_size')}"
        )
    lines = [f"head fitted by {how}", f"{scores.get('feature_cache_images', 0)} images through the frozen backbone once"]
    if "validation_accuracy" in scores:
        lines.append(f"validation-piece accuracy of the probe alone: {float(scores['validation_accuracy']):.4f}")
    if "validation_map" in scores:
        lines.append(f"validation-piece mAP of the probe alone: {float(scores['validation_map']):.4f}")
    return lines
