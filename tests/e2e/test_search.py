"""`finetune search` end to end: trials that never touch the eval split, one backbone pass for
the probe trials, the outputs and the card, pruning, resuming after kill -9, and two processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from finetune.cli.main import main
from finetune.recipe import load_recipe
from tests.helpers import ROOT
from tests.helpers.cli import run_cli
from tests.helpers.images import make_image_folder
from tests.helpers.search import LR, save_recipe, search_recipe


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "search_results.csv").open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ a search, in process


class _Forbidden:
    """Stands for the eval split during trials: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"a trial touched the eval split ({name})")

    def __len__(self):
        raise AssertionError("a trial touched the eval split (len)")


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_resnet):
    """A 3-trial search of a cached-feature probe, instrumented: the eval split is forbidden
    while a trial runs, and every decode, backbone pass and checkpoint is recorded."""
    from transformers import TrainerCallback

    import finetune.data
    import finetune.probe.head
    import finetune.training.train

    root = tmp_path_factory.mktemp("search")
    images = make_image_folder(root / "images", per_class=12)
    recipe = save_recipe(root / "r.json", search_recipe(tiny_resnet, images, root / "out", {
        "training.learning_rate": LR, "training.weight_decay": {"uniform": [0.0, 0.1]},
    }))
    events: list[str] = []
    in_trial = [False]
    patch = pytest.MonkeyPatch()

    def make_splits(*args, **kwargs):
        splits = real_splits(*args, **kwargs)
        if in_trial[0]:
            splits.eval = _Forbidden()
        return splits

    def decode(split, *args, **kwargs):
        events.append(args[4] if len(args) > 4 else "decode")  # its description: "decoding eval", ...
        return real_decode(split, *args, **kwargs)

    def compute_features(model, dataset, *args, **kwargs):
        events.append(f"features of {len(dataset)} images")
        return real_features(model, dataset, *args, **kwargs)

    class CountSaves(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            events.append("checkpoint in a trial")

    def train_trial(recipe, callbacks, reuse):
        in_trial[0] = True
        events.append("trial")
        try:
            return real_trial(recipe, [*callbacks, CountSaves()], reuse)
        finally:
            in_trial[0] = False

    real_splits, real_decode, real_features, real_trial = (
        finetune.data.make_splits, finetune.data.decode, finetune.probe.head.compute_features, finetune.training.train.train_trial
    )
    patch.setattr(finetune.data, "make_splits", make_splits)
    patch.setattr(finetune.data, "decode", decode)
    patch.setattr(finetune.probe.head, "compute_features", compute_features)
    patch.setattr(finetune.training.train, "train_trial", train_trial)
    try:
        code = main(["search", str(recipe), "--trials", "3"])
        first = list(events)
        again = main(["search", str(recipe), "--trials", "3"])  # everything done: nothing runs
    finally:
        patch.undo()
    return SimpleNamespace(root=root, out=root / "out", recipe=recipe, code=code, again=again, events=first, later=events[len(first):])


@pytest.mark.e2e
def test_trials_never_touch_the_eval_split_and_the_final_run_reads_it_once(searched) -> None:
    assert searched.code == 0
    events = searched.events
    assert events.count("trial") == 3
    assert events.count("decoding eval") == 1
    assert events.index("decoding eval") > max(i for i, e in enumerate(events) if e == "trial")
    assert "checkpoint in a trial" not in events
    assert not (searched.out / "trials").exists()


@pytest.mark.e2e
def test_probe_trials_share_one_backbone_pass(searched) -> None:
    """Train and validation pieces once for the whole search (trials and final run), the eval split once at the end."""
    passes = [e for e in searched.events if e.startswith("features of")]
    assert passes == ["features of 27 images", "features of 9 images", "features of 18 images"]


@pytest.mark.e2e
def test_a_finished_search_run_again_reads_nothing_again(searched) -> None:
    assert searched.again == 0
    assert searched.later == []
    assert len(_rows(searched.out)) == 3


@pytest.mark.e2e
def test_the_outputs_list_every_trial_and_the_card_tells_how_the_recipe_was_chosen(searched) -> None:
    out = searched.out
    rows = _rows(out)
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} == {"complete"}
    assert all(0 <= float(r["validation_accuracy"]) <= 1 and float(r["seconds"]) > 0 for r in rows)
    assert all(1e-3 <= float(r["training.learning_rate"]) <= 0.5 for r in rows)
    assert (out / "search_history.png").stat().st_size > 0 and (out / "search_importance.png").stat().st_size > 0
    best = json.loads((out / "best_recipe.json").read_text())
    top = max(rows, key=lambda r: float(r["validation_accuracy"]))
    assert best["training"]["learning_rate"] == pytest.approx(float(top["training.learning_rate"]))
    card = (out / "final" / "README.md").read_text()
    assert "### Hyper-parameter search" in card and "**3 trials**" in card
    assert "The test split, **test**, was used once: to score this final model, after the\nsearch ended. No trial saw it." in card
    assert "| `training.learning_rate` | number in [0.001, 0.5] (log scale) |" in card
    assert json.loads((out / "final" / "eval_results.json").read_text())["eval_num_images"] == 18


@pytest.mark.e2e
def test_the_best_recipe_validates_and_trains(searched, tmp_path: Path) -> None:
    from finetune.training.train import train

    best = searched.out / "best_recipe.json"
    assert main(["validate", str(best)]) == 0
    recipe = load_recipe(best, [f"output_dir={tmp_path / 'again'}"])
    assert recipe.search is None
    metrics = train(recipe)
    assert metrics["eval_num_images"] == 18 and (tmp_path / "again" / "model.safetensors").is_file()


@pytest.mark.e2e
def test_a_different_recipe_in_the_same_folder_is_refused(searched, capsys) -> None:
    code = main(["search", str(searched.recipe), "--trials", "3", "--set", "training.num_train_epochs=3"])
    assert code == 2
    assert "holds a search of a different recipe (training.num_train_epochs: 2 → 3)" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_grid_over_any_recipe_key_runs_each_point_once(tmp_path: Path, tiny_resnet: Path) -> None:
    """model.strategy × model.probe_solver: the one clashing pair fails on its own, the others run."""
    images = make_image_folder(tmp_path / "images", per_class=8)
    recipe = save_recipe(tmp_path / "r.json", search_recipe(tiny_resnet, images, tmp_path / "out", {
        "model.strategy": {"choice": ["linear_probe", "full"]},
        "model.probe_solver": {"choice": ["trainer", "lbfgs"]},
    }, training={"num_train_epochs": 1}))
    assert main(["search", str(recipe), "--trials", "10", "--sampler", "grid", "--no-final"]) == 0
    rows = _rows(tmp_path / "out")
    points = {(json.loads(r["model.strategy"]), json.loads(r["model.probe_solver"])): r for r in rows}
    assert len(rows) == len(points) == 4  # the grid, not --trials, sets the count
    assert points[("full", "lbfgs")]["state"] == "fail"
    assert "'model.probe_solver' 'lbfgs' fits the head on cached features" in points[("full", "lbfgs")]["note"]
    assert {points[p]["state"] for p in points if p != ("full", "lbfgs")} == {"complete"}
    assert not (tmp_path / "out" / "final").exists()


# -------------------------------------------------------------------------- end to end


def _search_cmd(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "finetune" / "run.py"), "search", str(recipe), *extra]


@pytest.mark.e2e
def test_unpromising_trials_are_pruned_at_epoch_ends(tmp_path: Path, tiny_resnet: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=12)
    recipe = save_recipe(tmp_path / "r.json", search_recipe(
        tiny_resnet, images, tmp_path / "out", {"training.learning_rate": {"log_uniform": [1e-5, 1.0]}},
        training={"num_train_epochs": 4},
    ))
    result = run_cli("search", str(recipe), "--trials", "10", "--sampler", "random", "--no-final")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(tmp_path / "out")
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert len(rows) == 10 and pruned, rows
    assert all(r["note"].startswith("pruned after") and "4 evaluation" not in r["note"] for r in pruned)
    # The median pruner waits for 5 finished trials before it prunes any.
    assert all(int(r["trial"]) >= 5 for r in pruned)


@pytest.mark.e2e
def test_a_search_killed_with_sigkill_continues_where_it_stopped(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=12)
    recipe = save_recipe(tmp_path / "r.json", search_recipe(
        tiny_vit, images, tmp_path / "out", model={"strategy": "full"}, training={"num_train_epochs": 3},
    ))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_search_cmd(recipe, "--trials", "4", "--no-final"), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    deadline = time.monotonic() + 300
    while not ((out / "search_results.csv").is_file() and len(_rows(out)) >= 1):
        assert proc.poll() is None, f"search ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no trial finished"
        time.sleep(0.05)
    time.sleep(0.5)  # into the next trial
    assert proc.poll() is None, "the search finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The study's database is the record: the kill may land anywhere (between a trial being
    # told and the table being written, or between two trials), and the resumed search goes
    # by the database.
    from optuna.trial import TrialState

    from finetune.sweeps.search_report import counts

    killed = _database(out).get_trials()
    finished = sum(counts(t) for t in killed)
    cut_off = [t for t in killed if t.state == TrialState.RUNNING]
    resumed = run_cli("search", str(recipe), "--trials", "4", "--no-final")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"search: {finished} of 4 trial(s) done" in resumed.stderr
    # (A kill between a trial's creation and its first drawn value leaves nothing to run again.)
    drawn = [t for t in cut_off if t.params]
    assert ("was cut off when the search stopped; it runs again" in resumed.stderr) == bool(drawn)
    assert ("was cut off before it drew its values" in resumed.stderr) == (len(drawn) < len(cut_off))
    rows = _rows(out)
    done = _database(out).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    assert [(r["trial"], r["state"]) for r in rows] == [(str(t.number), t.state.name.lower()) for t in done]
    assert sum(r["state"] == "complete" for r in rows) == 4
    cut = [r for r in rows if r["state"] == "fail"]
    assert [int(r["trial"]) for r in cut] == [t.number for t in cut_off]
    assert all(r["note"].startswith("interrupted") for r in cut)
    for row in cut:  # a cut-off trial ran again with its values (where it had drawn them)
        if not row["training.learning_rate"]:
            continue
        again = [r for r in rows if r["state"] == "complete" and r["training.learning_rate"] == row["training.learning_rate"]]
        assert len(again) == 1 and int(again[0]["trial"]) > int(row["trial"])


def _database(out: Path):
    import optuna

    from finetune.sweeps.search import DB, STUDY_NAME

    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / DB}")


@pytest.mark.e2e
def test_a_search_on_two_processes(tmp_path: Path, tiny_resnet: Path, monkeypatch) -> None:
    """Every trial on both ranks (torchrun, gloo): the main process samples, the other follows."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    images = make_image_folder(tmp_path / "images", per_class=12)
    recipe = save_recipe(tmp_path / "r.json", search_recipe(tiny_resnet, images, tmp_path / "out", training={"per_device_train_batch_size": 4}))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    result = run_cli("search", str(recipe), "--trials", "3", launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(tmp_path / "out")
    assert [r["state"] for r in rows] == ["complete"] * 3
    assert result.stderr.count("finetune: search: trial ") == 3  # logged by the main process alone
    assert "2 process(es)" in result.stderr
    final = json.loads((tmp_path / "out" / "final" / "eval_results.json").read_text())
    assert final["eval_num_images"] == 18  # every test image once, across both ranks
