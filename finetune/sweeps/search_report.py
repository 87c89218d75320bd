"""What a search leaves in its output folder: the trials table, the best recipe, the pictures and the card's summary."""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from finetune.recipe.search_space import Dimension
from finetune.utils.files import replacing, write_json

logger = logging.getLogger("finetune")

RESULTS = "search_results.csv"
BEST_RECIPE = "best_recipe.json"
HISTORY_PNG = "search_history.png"
IMPORTANCE_PNG = "search_importance.png"
#: Why a trial failed, stored with it; a failed trial without one was stopped by a kill or
#: Ctrl-C during it (:mod:`finetune.sweeps.search` redoes those).
FAILED_ATTR = "failed"


def counts(trial) -> bool:
    """Whether a finished trial counts towards ``--trials``: it ended by itself (completed,
    pruned, or failed for a reason of its own), not by the search being stopped during it."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and FAILED_ATTR in trial.user_attrs
    )


def _note(trial) -> str:
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get(FAILED_ATTR, "interrupted: the search was stopped during it, and redid it")
    if trial.state == TrialState.PRUNED:
        steps = sorted(trial.intermediate_values)
        return f"pruned after {len(steps)} evaluation(s)" if steps else "pruned"
    return ""


def write_results(study, dimensions: list[Dimension], path: Path, metric: str) -> None:
    """One row per finished trial of the study's database, which is the record that counts: its
    number, state, validation score, seconds and parameters. Written whole from the database each
    time (atomic), so a kill between a trial's end and this write costs nothing: the next write
    has it."""
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    with replacing(path, binary=False) as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", f"validation_{metric}", "seconds", *(d.key for d in dimensions), "note"])
        for trial in study.get_trials(deepcopy=False, states=finished):
            seconds = trial.duration.total_seconds() if trial.duration is not None else ""
            value = trial.value if trial.value is not None else ""
            params = [
                json.dumps(d.decode(trial.params[d.key])) if d.key in trial.params else "" for d in dimensions
            ]
            state = trial.state.name.lower()
            writer.writerow([trial.number, state, value, seconds and round(seconds, 2), *params, _note(trial)])


def best_recipe(raw: dict[str, Any], params: dict[str, Any], out: Path) -> dict[str, Any]:
    """The recipe as written, without its ``search`` block, with the best values set, and its
    output in ``out/final``: a normal recipe that ``finetune train`` runs."""
    from finetune.recipe import apply_overrides

    base = {k: v for k, v in raw.items() if k != "search"}
    best = apply_overrides(base, [f"{key}={json.dumps(value)}" for key, value in params.items()], "best recipe")
    best["output_dir"] = str(out / "final")
    return best


def write_pictures(study, out: Path) -> list[str]:
    """The optimisation history and the parameter importances (optuna's matplotlib plots);
    returns the names written. Importances need two completed trials whose scores differ."""
    import matplotlib

    matplotlib.use("Agg")  # files only, whatever display the machine has
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    written = []
    for name, draw in ((HISTORY_PNG, plots.plot_optimization_history), (IMPORTANCE_PNG, plots.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                ax = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            logger.info("search: no %s (%s)", name, str(err).splitlines()[0] if str(err) else type(err).__name__)
            continue
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        with replacing(out / name) as f:
            figure.savefig(f, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(name)
    return written


def summary(
    study, dimensions: list[Dimension], params: dict[str, Any], metric: str, sampler: str, pruner: str
) -> dict[str, Any]:
    """The card's account of the search (:mod:`finetune.publish.card` renders it)."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if counts(t)]
    best = study.best_trial
    return {
        "sampler": sampler,
        "pruner": pruner,
        "trials": len(trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "metric": f"{metric} ({'higher' if study.direction.name == 'MAXIMIZE' else 'lower'} is better)",
        "best_number": best.number,
        "best_value": float(best.value),
        "space": [(d.key, d.describe(), json.dumps(params[d.key])) for d in dimensions],
    }


def write_best(raw: dict[str, Any], params: dict[str, Any], out: Path) -> dict[str, Any]:
    best = best_recipe(raw, params, out)
    write_json(out / BEST_RECIPE, best)
    return best
