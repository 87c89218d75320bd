"""One trial of a search, on every process: its recipe, the callback that prunes it, its quiet log, its outcome."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from finetune.recipe import Recipe, apply_overrides, recipe_from_dict
from finetune.recipe.metric_names import KNOWN_METRICS, MULTI_LABEL_METRICS
from finetune.sweeps import search_report
from finetune.utils.errors import UserError

logger = logging.getLogger("finetune")


def trial_recipe(raw: dict[str, Any], params: dict[str, Any], folder: Path, source: str) -> Recipe:
    """The recipe of one trial: the searched values set, its own folder, per-epoch scores on
    the validation piece, and no checkpoint unless the best epoch is to be loaded back (it
    must then be saved: one, in the trial's folder, which the search removes)."""
    trial = apply_overrides({k: v for k, v in raw.items() if k != "search"},
                            [f"{key}={json.dumps(value)}" for key, value in params.items()], source)
    training = dict(trial.get("training") or {})
    keeps_best = bool(training.get("load_best_model_at_end")) or training.get("early_stopping_patience") is not None
    if training.get("eval_strategy") != "steps":
        training["eval_strategy"] = "epoch"
    training["save_strategy"] = training["eval_strategy"] if keeps_best else "no"
    if keeps_best:
        training["save_total_limit"] = 1
    training["disable_tqdm"] = True  # the search's bar over trials stands for them
    trial["training"] = training
    trial["output_dir"] = str(folder)
    return recipe_from_dict(trial, source)


def share(state, *values: Any) -> list[Any]:
    """The main process's values, on every process."""
    if state.num_processes == 1:
        return list(values)
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list(list(values))


def prune_callback(trial, metric: str, state):
    from transformers import TrainerCallback

    class PruneCallback(TrainerCallback):
        """Reports the validation score at each evaluation during training to the trial (on
        the main process) and stops training when the pruner says so; every rank follows the
        main process's answer, so all stop at the same step."""

        pruned_at: int | None = None
        training = True

        def on_train_end(self, args, state_, control, **kwargs):
            self.training = False

        def on_evaluate(self, args, state_, control, metrics=None, **kwargs):
            key = f"eval_{metric}"
            if not self.training or not metrics or key not in metrics:
                return
            # Epoch numbers line trials with different batch sizes up at the same point.
            step = int(round(state_.epoch or 0)) if args.eval_strategy == "epoch" else state_.global_step
            prune = False
            if trial is not None:
                trial.report(float(metrics[key]), step)
                prune = trial.should_prune()
            (prune,) = share(state, prune)
            if prune:
                self.pruned_at = step
                control.should_training_stop = True

    return PruneCallback()


class Quiet(logging.Filter):
    """During trials: no info lines (the search logs one per trial), each warning once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.levelno < logging.WARNING or text in self.seen:
            return False
        self.seen.add(text)
        return True


@contextlib.contextmanager
def filtered(log_filter: logging.Filter):
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


class ObjectiveMissing(UserError):
    """The trials' scores lack the metric the search compares them by: the search stops."""


def missing_objective(metric: str, scores: dict[str, Any]) -> ObjectiveMissing:
    """The one-line error for trials that do not compute ``metric`` (e.g. accuracy on multi-label data)."""
    computed = [k.removeprefix("eval_") for k in scores if k.removeprefix("eval_") in KNOWN_METRICS]
    multi = any(m in MULTI_LABEL_METRICS for m in computed)
    example = computed[0] if computed else "eval_loss"
    return ObjectiveMissing(
        f"search: trials are compared by validation {metric}, which these runs do not compute (they compute "
        f"{', '.join(computed) or 'no metric'}{': the data is multi-label' if multi else ''}); set "
        f'training.metric_for_best_model to one of them (e.g. "{example}")'
        + (' or data.task to "multi_label"' if multi else "")
    )


def run_trial(trial, state, raw, source, params, metric, folder: Path, shared, quiet):
    """Train one trial on every process: (score, epoch it was pruned at, why it failed, seconds).
    Raises :class:`ObjectiveMissing` when the trial's scores lack ``metric``."""
    import torch

    from finetune.data import DataError
    from finetune.training.train import train_trial

    start = time.perf_counter()
    callback = prune_callback(trial, metric, state)
    value, failed, scores = None, None, None
    try:
        recipe = trial_recipe(raw, params, folder, f"{source} (trial)")
        with filtered(quiet):
            scores = train_trial(recipe, [callback], shared)
        if f"eval_{metric}" not in scores:
            raise missing_objective(metric, scores)
        value = float(scores[f"eval_{metric}"])
    # Values that clash with each other (only checked per trial), data or model problems that
    # depend on the values, or a batch too large for the device: this trial fails, the search goes on.
    except ObjectiveMissing:
        raise
    except (UserError, DataError, torch.OutOfMemoryError) as err:
        failed = str(err).splitlines()[0] if str(err) else type(err).__name__
    finally:
        if state.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
    return value, callback.pruned_at, failed, time.perf_counter() - start


def tell(study, trial, value, pruned_at, failed) -> None:
    from optuna.trial import TrialState

    if failed is not None:
        trial.set_user_attr(search_report.FAILED_ATTR, failed)
        study.tell(trial, state=TrialState.FAIL)
    elif pruned_at is not None:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, value)
