"""``finetune search``: an optuna study over a recipe's ``search`` block, each trial scored on the validation piece alone.

The eval split is read once, by the final run of the best recipe, never by a trial.

The study lives in ``output_dir/search.db`` (SQLite), so running the same command again
continues a search that was stopped, even by kill -9: finished trials are kept, a trial cut
off mid-way is redone with the same values. Each trial trains like ``finetune train``
(``finetune.training.train.train_trial``) in a temporary folder with no checkpoint unless
the recipe loads its best epoch back; it reports its validation score at every evaluation,
and the pruner (median by default) stops unpromising ones. Trials of one search share the
decoded data and, for a cached-feature linear probe, the backbone's features
(:mod:`finetune.training.shared`), so such a search runs the backbone once. With several
processes (``accelerate launch``, torchrun) every trial uses every rank: the main process
samples and the others follow.

Outputs: ``search_results.csv``, ``best_recipe.json``, ``search_history.png``,
``search_importance.png`` and, with ``--final`` (the default), the best recipe trained in
``output_dir/final`` and scored once on the eval split, its card saying how it was chosen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.recipe import Recipe, recipe_from_dict, search_space
from finetune.recipe.metric_names import MULTI_LABEL_METRICS
from finetune.sweeps import search_report
from finetune.sweeps.search_trial import Quiet, run_trial, share, tell
from finetune.utils import extras
from finetune.utils.errors import UserError
from finetune.utils.files import is_temporary

logger = logging.getLogger("finetune")

DB = "search.db"
STUDY_NAME = "finetune-search"
_OURS = {DB, DB + "-journal", search_report.RESULTS, search_report.RESULTS + ".tmp", search_report.BEST_RECIPE,
         search_report.BEST_RECIPE + ".tmp", search_report.HISTORY_PNG, search_report.IMPORTANCE_PNG, "trials", "final",
         "inspect"}  # finetune inspect's report on the recipe's data


class SearchError(UserError):
    """A search that cannot start: the recipe, the options or the output folder; one line, with the fix."""


@dataclass
class Options:
    trials: int
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    final: bool = True


def declared_multi_label(recipe: Recipe) -> bool:
    """Whether the recipe says its data is multi-label before any is read: ``data.task:
    multi_label``, or a ``metrics`` list of multi-label metrics only."""
    metrics = list(recipe.metrics)
    return getattr(recipe.data, "task", "auto") == "multi_label" or bool(metrics) and all(
        m in MULTI_LABEL_METRICS for m in metrics
    )


def _data_is_multi_label(recipe: Recipe) -> bool | None:
    """Whether the data holds several classes per image, read from its label column before the
    first trial when the recipe leaves it to the data (``data.task: auto``) and names no metric
    to compare trials by; else None (the recipe says)."""
    if recipe.training.get("metric_for_best_model") or recipe.data.task != "auto":
        return None
    from finetune import data
    from finetune.data.columns import is_multi_label_column

    raw = data.load_raw(recipe.data)
    if recipe.data.train_split not in raw:
        return None  # the trials' data preparation says what is wrong, in its own words
    train = raw[recipe.data.train_split]
    _, label = data.find_columns(train, recipe.data)
    return is_multi_label_column([train], label, recipe.data)


def objective(recipe: Recipe, multi_label: bool | None = None) -> tuple[str, str]:
    """(the metric trials are compared by, "maximize" or "minimize"): the recipe's
    ``metric_for_best_model``, else accuracy (else its first metric); for multi-label data
    (``multi_label``, or None: :func:`declared_multi_label`) mAP (else its first multi-label metric)."""
    t = recipe.training
    name = t.get("metric_for_best_model")
    multi = declared_multi_label(recipe) if multi_label is None else multi_label
    if name:
        name = name.removeprefix("eval_")
    elif multi:
        # A recipe left at the single-label default computes the multi-label list on such data.
        listed = [m for m in recipe.metrics if m in MULTI_LABEL_METRICS] or list(MULTI_LABEL_METRICS)
        name = "map" if "map" in listed else listed[0]
    else:
        name = "accuracy" if "accuracy" in recipe.metrics else recipe.metrics[0]
    greater = t.get("greater_is_better")
    if greater is None:
        greater = not name.endswith("loss")  # TrainingArguments' own default
    return name, "maximize" if greater else "minimize"


def check(recipe: Recipe, options: Options, source: str) -> list[search_space.Dimension]:
    """Everything that would stop the search, before anything is loaded; returns the dimensions."""
    if not recipe.search:
        raise SearchError(
            f"{source}: no 'search' block; add one, e.g. \"search\": {{\"training.learning_rate\": "
            "{\"log_uniform\": [1e-5, 1e-2]}}"
        )
    if recipe.data.validation_fraction == 0:
        raise SearchError(
            f"{source}: 'data.validation_fraction' is 0, but trials are scored on the validation piece; "
            "set it above 0 (e.g. 0.1)"
        )
    if options.final and recipe.data.eval_split is None:
        raise SearchError(
            f"{source}: 'data.eval_split' is null, so the final run would report the validation piece that chose the "
            "hyper-parameters; name an eval split, or pass --no-final"
        )
    if options.timeout is not None and options.timeout <= 0:
        raise SearchError(f"--timeout must be a number of seconds > 0, got {options.timeout:g}")
    dimensions = [search_space.parse(key, spec) for key, spec in recipe.search.items()]
    continuous = [d.key for d in dimensions if d.grid() is None]
    if options.sampler == "grid" and continuous:
        raise SearchError(
            f"{source}: --sampler grid needs values to list, but 'search' key '{continuous[0]}' is a continuous range; "
            "give it as {\"choice\": [...]} or with a \"step\", or use --sampler tpe"
        )
    if absent := extras.problem("search"):
        raise SearchError(f"finetune search needs optuna: {absent}")
    return dimensions


def _grid_class():
    from optuna.samplers import GridSampler

    class Grid(GridSampler):
        """optuna's grid sampler for a study told its trials (``Study.tell``): its
        ``after_trial`` stops an ``optimize`` loop once the grid is done, which raises outside
        one; the search asks ``is_exhausted`` itself instead."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return Grid


def _open_study(out: Path, recipe: Recipe, options: Options, direction: str, dimensions, metric: str):
    """Lock the folder and open (or continue) its study; trials a kill cut off are failed and
    queued again with the same values. Main process only."""
    import optuna
    from optuna.trial import TrialState

    from finetune.training.output_dir import OutputLock, check_output_path, recipe_differences
    from finetune.training.run_files import MANIFEST

    check_output_path(out)
    if out.is_dir():
        # The manifest: finetune inspect's, naming its report.
        foreign = sorted(
            p.name for p in out.iterdir()
            if p.name not in _OURS | {MANIFEST} and not p.name.startswith(".finetune.lock") and not is_temporary(p.name)
        )
        if foreign:
            raise SearchError(
                f"output_dir: '{out}' holds files that are not a finetune search ({', '.join(foreign[:5])}); "
                "choose another output_dir (--set output_dir=...)"
            )
    out.mkdir(parents=True, exist_ok=True)
    lock = OutputLock(out).acquire()
    try:
        lock.write_holder()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search logs its own line per trial
        storage = optuna.storages.RDBStorage(f"sqlite:///{(out / DB).resolve()}")
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, load_if_exists=True)
        mine = {k: v for k, v in recipe.to_dict().items() if k not in ("hub", "output_dir")}
        recorded = study.user_attrs.get("recipe")
        if recorded is None:
            study.set_user_attr("recipe", mine)
        elif recorded != mine:
            shown = "; ".join(recipe_differences(recorded, json.loads(json.dumps(mine)))[:3])
            raise SearchError(
                f"output_dir: '{out}' holds a search of a different recipe ({shown}); choose another output_dir "
                f"(--set output_dir=...) or delete {out / DB} to start again"
            )
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(stale.number, state=TrialState.FAIL)
            if stale.params:
                study.enqueue_trial(stale.params)
                logger.info("search: trial %d was cut off when the search stopped; it runs again", stale.number)
            else:  # cut off between its creation and its first drawn value: nothing to run again
                logger.info("search: trial %d was cut off before it drew its values; a new trial takes its place",
                            stale.number)
        shutil.rmtree(out / "trials", ignore_errors=True)  # what cut-off trials left
        # The table follows the database: a kill after a trial was told and before the table
        # was written left it one trial short.
        search_report.write_results(study, dimensions, out / search_report.RESULTS, metric)
        seed = int(recipe.training.get("seed", 42)) + len(study.trials)  # a continued search draws new values
        _Grid = _grid_class()
        samplers = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "grid": lambda: _Grid({d.key: d.grid() for d in dimensions}, seed=seed),
        }
        study.sampler = samplers[options.sampler]()
        study.pruner = optuna.pruners.MedianPruner() if options.pruner == "median" else optuna.pruners.NopPruner()
    except BaseException:
        lock.release()
        raise
    return lock, study


def search(recipe: Recipe, raw: dict[str, Any], source: str, options: Options) -> dict[str, Any]:
    """Run (or continue) the search, then the final run; returns what happened, for the command line."""
    from accelerate import PartialState

    from finetune.training.arguments import training_arguments
    from finetune.training.shared import SharedWork

    dimensions = check(recipe, options, source)
    metric, direction = objective(recipe, multi_label=_data_is_multi_label(recipe))
    out = Path(recipe.output_dir)
    base_args = training_arguments(recipe, source)  # decides the device and backend, before PartialState
    state = PartialState()
    lock = study = problem = None
    if state.is_main_process:
        try:
            lock, study = _open_study(out, recipe, options, direction, dimensions, metric)
        except UserError as err:
            problem = str(err)
    (problem,) = share(state, problem)
    if problem is not None:
        raise SearchError(problem)
    try:
        shared = SharedWork()
        _trials(study, state, raw, source, options, dimensions, metric, out, base_args, shared)
        result = _after(study, state, raw, options, dimensions, metric, out)
        if options.final:
            result["final"] = _final(state, result, out, shared)
        return result
    finally:
        if lock is not None:
            lock.release()


def _trials(study, state, raw, source, options, dimensions, metric, out, base_args, shared) -> None:
    """The trial loop: the main process asks the study for values and the others follow."""
    from finetune.utils import progress

    main = state.is_main_process
    done = sum(search_report.counts(t) for t in study.get_trials(deepcopy=False)) if main else 0
    bar = progress.bar(base_args, total=options.trials, desc="search", unit="trial")
    bar.update(min(done, options.trials))
    if main:
        logger.info(
            "search: %d of %d trial(s) done; each scored by validation %s (%s); sampler %s, pruner %s; space: %s",
            done, options.trials, metric, direction_word(study), options.sampler, options.pruner,
            "; ".join(f"{d.key} {d.describe()}" for d in dimensions),
        )
    started = time.monotonic()
    quiet = Quiet()
    while True:
        trial = params = None
        if main:
            timed_out = options.timeout is not None and time.monotonic() - started > options.timeout
            exhausted = options.sampler == "grid" and study.sampler.is_exhausted(study)
            if done < options.trials and not timed_out and not exhausted:
                trial = study.ask({d.key: d.distribution() for d in dimensions})
                params = {d.key: d.decode(trial.params[d.key]) for d in dimensions}
            elif done < options.trials:
                why = "--timeout reached" if timed_out else "the grid is exhausted"
                logger.info("search: %s after %d trial(s)", why, done)
        number, params = share(state, trial.number if trial is not None else None, params)
        if params is None:
            break
        folder = out / "trials" / f"trial-{number:04d}"
        value, pruned_at, failed, seconds = run_trial(trial, state, raw, source, params, metric, folder, shared, quiet)
        if main:
            tell(study, trial, value, pruned_at, failed)
            done += 1
            shown = ", ".join(f"{k} {json.dumps(v)}" for k, v in params.items())
            if failed is not None:
                outcome = failed
            else:
                outcome = f"pruned at {pruned_at}" if pruned_at is not None else f"validation {metric} {value:.4f}"
            logger.info("search: trial %d (%.1f s): %s → %s", number, seconds, shown, outcome)
            search_report.write_results(study, dimensions, out / search_report.RESULTS, metric)
            bar.update(1)
    bar.close()
    if main:
        with contextlib.suppress(OSError):
            (out / "trials").rmdir()  # empty once every trial has cleaned up after itself


def direction_word(study) -> str:
    return "higher is better" if study.direction.name == "MAXIMIZE" else "lower is better"


def _after(study, state, raw, options, dimensions, metric, out) -> dict[str, Any]:
    """The best trial's recipe, the table and the pictures (main process); the best recipe
    and the card's summary on every process."""
    from optuna.trial import TrialState

    result, problem = None, None
    if state.is_main_process:
        search_report.write_results(study, dimensions, out / search_report.RESULTS, metric)
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            problem = f"search: no trial completed; see why in {out / search_report.RESULTS}"
        else:
            best = study.best_trial
            params = {d.key: d.decode(best.params[d.key]) for d in dimensions}
            best_raw = search_report.write_best(raw, params, out)
            pictures = search_report.write_pictures(study, out)
            sampler = {"tpe": "TPE", "random": "random", "grid": "grid"}[options.sampler]
            pruner = "median pruner" if options.pruner == "median" else "no pruning"
            summary = search_report.summary(study, dimensions, params, metric, sampler, pruner)
            result = {"best_recipe": best_raw, "summary": summary, "pictures": pictures, "metric": metric}
            logger.info(
                "search: best trial %d, validation %s %.4f: %s; its recipe is %s",
                best.number, metric, best.value, ", ".join(f"{k} {json.dumps(v)}" for k, v in params.items()),
                out / search_report.BEST_RECIPE,
            )
    result, problem = share(state, result, problem)
    if problem is not None:
        raise SearchError(problem)
    return result


def _final(state, result: dict[str, Any], out: Path, shared) -> dict[str, Any] | None:
    """Train the best recipe in ``out/final`` and score it once on the eval split; nothing
    when that run is there already (the eval split is not read again)."""
    from finetune.training.train import train

    source = str(out / search_report.BEST_RECIPE)
    best = recipe_from_dict(result["best_recipe"], source)
    final = Path(best.output_dir)
    status = None
    if state.is_main_process:
        try:
            previous = json.loads((final / "recipe.json").read_text())
        except (OSError, ValueError):
            previous = None
        same = previous is not None and {k: v for k, v in previous.items() if k != "hub"} == json.loads(
            json.dumps({k: v for k, v in best.to_dict().items() if k != "hub"})
        )
        finished = same and (final / "eval_results.json").is_file()
        status = "done" if finished else "replace" if previous is not None and not same else "run"
    (status,) = share(state, status)
    if status == "done":
        logger.info("search: the final run in %s is done already; the eval split is not read again", final)
        return json.loads((final / "eval_results.json").read_text())
    if status == "replace":
        logger.info("search: the best trial changed since the final run in %s; training the new best there", final)
    return train(best, overwrite=status == "replace", source=source, shared=shared, search=result["summary"])
