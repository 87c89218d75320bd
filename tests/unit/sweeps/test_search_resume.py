"""search.py on resume: the study database is the truth, and search_results.csv is rewritten from it before anything else runs."""

from __future__ import annotations

import csv
from pathlib import Path

from finetune.recipe import recipe_from_dict
from finetune.sweeps import search, search_report


def _csv(out: Path) -> list[tuple[str, str]]:
    with (out / search_report.RESULTS).open(newline="") as f:
        return [(row["trial"], row["state"]) for row in csv.DictReader(f)]

def _search_of(out: Path):
    """A four-trial search of the learning rate into ``out``: recipe, options, dimensions, metric, direction."""
    recipe = recipe_from_dict({
        "description": "d", "model": {"name_or_path": "m/m"}, "data": {"dataset": "d/d"}, "output_dir": str(out),
        "search": {"training.learning_rate": {"log_uniform": [1e-5, 1e-2]}},
    })
    options = search.Options(trials=4, final=False)
    dimensions = search.check(recipe, options, "r.json")
    metric, direction = search.objective(recipe)
    return recipe, options, dimensions, metric, direction



def _killed_search(tmp_path: Path):
    """An empty study of :func:`_search_of` in ``tmp_path/out``, for a test to leave as a kill would:
    the folder, the search's parts, the study and its search space."""
    import optuna

    out = tmp_path / "out"
    out.mkdir()
    parts = _search_of(out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{out / search.DB}", study_name=search.STUDY_NAME, direction=parts[4])
    return out, parts, study, {d.key: d.distribution() for d in parts[2]}


def test_the_table_follows_the_database_whatever_a_kill_left(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    out, (recipe, options, dimensions, metric, direction), study, space = _killed_search(tmp_path)
    study.tell(study.ask(space), 0.5)
    search_report.write_results(study, dimensions, out / search_report.RESULTS, metric)
    study.tell(study.ask(space), 0.25)  # the kill landed after this was told, before the table was written
    study.ask(space)  # and this one was running
    assert len(_csv(out)) == 1

    lock, resumed = search._open_study(out, recipe, options, direction, dimensions, metric)
    lock.release()
    finished = resumed.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    assert _csv(out) == [(str(t.number), t.state.name.lower()) for t in finished]
    assert [state for _, state in _csv(out)] == ["complete", "complete", "fail"]  # the cut-off one, to be redone


def test_a_trial_cut_off_before_it_drew_values_is_failed_and_not_run_again(tmp_path: Path, caplog) -> None:
    import logging

    from optuna.trial import TrialState

    out, (recipe, options, dimensions, metric, direction), study, space = _killed_search(tmp_path)
    drawn = study.ask(space)  # cut off with its value drawn: to run again
    study.ask()  # cut off as it was created, before its first suggest: nothing to run again
    with caplog.at_level(logging.INFO, logger="finetune"):
        lock, resumed = search._open_study(out, recipe, options, direction, dimensions, metric)
    lock.release()
    assert [t.state for t in resumed.get_trials()] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert resumed.get_trials()[2].system_attrs["fixed_params"] == drawn.params  # only the one with values is queued again
    assert "trial 0 was cut off when the search stopped; it runs again" in caplog.text
    assert "trial 1 was cut off before it drew its values; a new trial takes its place" in caplog.text


def test_a_folder_holding_finetune_inspects_report_takes_a_search(tmp_path: Path) -> None:
    """inspect's report and the manifest that names it are finetune's; a file of the user's is not."""
    import pytest

    from finetune.training import run_files

    out = tmp_path / "out"
    out.mkdir()
    run_files.record(out, "inspect")
    (out / "inspect").mkdir()
    (out / "inspect" / "summary.json").write_text("{}")
    recipe, options, dimensions, metric, direction = _search_of(out)
    lock, _ = search._open_study(out, recipe, options, direction, dimensions, metric)
    lock.release()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(search.SearchError, match=r"not a finetune search \(notes.txt\)"):
        search._open_study(out, recipe, options, direction, dimensions, metric)
