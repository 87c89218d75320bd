"""search_trial.py: a trial's recipe, and the callback that prunes it on every rank."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from finetune.sweeps.search_trial import trial_recipe
from tests.helpers.search import search_recipe


def test_trials_save_no_checkpoint_unless_the_best_epoch_is_loaded_back(tmp_path: Path) -> None:
    raw = search_recipe("m", "d", tmp_path / "o")
    trial = trial_recipe(raw, {"training.learning_rate": 0.01}, tmp_path / "t", "r.json")
    assert trial.search is None and trial.output_dir == str(tmp_path / "t")
    assert trial.training["learning_rate"] == 0.01
    assert trial.training["save_strategy"] == "no" and trial.training["eval_strategy"] == "epoch"
    best = {**raw, "training": {**raw["training"], "load_best_model_at_end": True}}
    trial = trial_recipe(best, {"training.learning_rate": 0.01}, tmp_path / "t", "r.json")
    assert trial.training["save_strategy"] == "epoch" and trial.training["save_total_limit"] == 1


def test_the_prune_callback_stops_every_rank_on_the_pruners_word() -> None:
    optuna = pytest.importorskip("optuna")
    from finetune.sweeps.search_trial import prune_callback

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    good.report(0.9, 1)
    study.tell(good, 0.9)
    weak = study.ask()
    callback = prune_callback(weak, "accuracy", SimpleNamespace(num_processes=1))
    args = SimpleNamespace(eval_strategy="epoch")
    control = SimpleNamespace(should_training_stop=False)
    callback.on_evaluate(args, SimpleNamespace(epoch=1.0, global_step=4), control, metrics={"eval_accuracy": 0.2})
    assert control.should_training_stop and callback.pruned_at == 1
    assert study.trials[weak.number].intermediate_values == {1: 0.2}
