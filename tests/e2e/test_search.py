"""finetune search: the search block's schema, trials that never touch the eval split, pruning,
the outputs, resuming after kill -9, and two processes."""

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
from finetune.recipe import RecipeError, load_recipe, recipe_from_dict, search_space
from finetune.sweeps.search import Options, SearchError, check, objective
from finetune.sweeps.search_trial import trial_recipe
from tests.helpers import ROOT
from tests.helpers.cli import run_cli
from tests.helpers.images import make_image_folder

LR = {"log_uniform": [1e-3, 0.5]}


def _raw(model_path: Path | str, images: Path | str, out: Path, search: dict | None = None, **sections) -> dict:
    raw = {
        "description": "search test",
        "model": {"name_or_path": str(model_path), "strategy": "linear_probe"},
        "data": {"dataset": str(images), "validation_fraction": 0.25, "augment": {"crop_scale": None, "hflip": False}},
        "training": {"num_train_epochs": 2, "per_device_train_batch_size": 8, "use_cpu": True, "seed": 0,
                     "disable_tqdm": True},
        "output_dir": str(out),
        "search": search if search is not None else {"training.learning_rate": LR},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def _write(path: Path, raw: dict) -> Path:
    path.write_text(json.dumps(raw, indent=2))
    return path


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "search_results.csv").open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------ the search block


def test_dimensions_parse_and_sample_as_declared() -> None:
    pytest.importorskip("optuna")
    lr = search_space.parse("training.learning_rate", {"log_uniform": [1e-5, 1e-2]})
    assert lr.distribution().log and lr.candidates() == [1e-5, 1e-2] and lr.grid() is None
    epochs = search_space.parse("training.num_train_epochs", {"int": [3, 9], "step": 3})
    assert epochs.grid() == [3, 6, 9] and epochs.distribution().step == 3
    l2 = search_space.parse("model.probe_l2", {"choice": [[0.1], [0.01, 0.1]]})
    # Lists travel through optuna as JSON text and come back as lists.
    assert l2.decode(l2.distribution().choices[1]) == [0.01, 0.1]
    assert search_space.parse("training.optim", {"choice": ["sgd", "adamw_torch"]}).decode("sgd") == "sgd"


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"loguniform": [1, 2]}, "unknown kind 'loguniform'"),
        ({"uniform": [1, 2], "log_uniform": [1, 2]}, "name exactly one of"),
        ({"uniform": [2, 1]}, "needs low < high"),
        ({"log_uniform": [0, 1]}, "needs low > 0"),
        ({"int": [1.5, 3]}, "bounds must be integers"),
        ({"int": [1, 10], "step": 4}, "does not divide"),
        ({"choice": []}, "one or more values"),
        ({"choice": [1, 1]}, "lists a value twice"),
        ({"uniform": [0, 1], "log": True}, "unknown option 'log'"),
        ([1, 2], "must be an object"),
    ],
)
def test_malformed_dimensions_say_what_is_wrong(spec, needle: str) -> None:
    with pytest.raises(search_space.SpaceError, match=needle):
        search_space.parse("training.learning_rate", spec)


@pytest.mark.parametrize(
    "search, needle",
    [
        ({"training.learnig_rate": LR}, "'search' key 'training.learnig_rate' is not a recipe key; did you mean 'training.learning_rate'?"),
        ({"model.stratgy": {"choice": ["full"]}}, "did you mean 'model.strategy'?"),
        ({"training.weight_decay": {"loguniform": [0.1, 1]}}, "unknown kind 'loguniform'; did you mean 'log_uniform'?"),
        ({"model.strategy": {"choice": ["full", "lora_typo"]}}, "the value \"lora_typo\" is not one the key accepts"),
        # An integer key given a float range: optuna would sample 8.37.
        ({"training.per_device_train_batch_size": {"uniform": [8, 64]}}, "the value 8.0 is not one the key accepts"),
        ({"data.augment.random_erasing": {"uniform": [0, 2]}}, "'data.augment.random_erasing' is a probability"),
        ({"training.seed": {"int": [0, 3]}}, "cannot be searched: it changes the validation piece"),
        ({"data.eval_split": {"choice": ["test"]}}, "trials never read the eval split"),
        ({}, "'search' lists no keys"),
    ],
)
def test_search_block_errors_name_the_key_and_the_fix(search: dict, needle: str) -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(_raw("m", "d", Path("/tmp/o"), search), "r.json")
    assert needle in str(err.value)
    assert all(line.startswith("r.json: ") for line in str(err.value).splitlines())


def test_values_that_only_clash_with_another_searched_key_are_left_to_the_trial() -> None:
    """lbfgs needs a linear probe: refused against a full fine-tune, accepted when the strategy is searched too."""
    raw = _raw("m", "d", Path("/tmp/o"), {"model.probe_solver": {"choice": ["trainer", "lbfgs"]}}, model={"strategy": "full"})
    with pytest.raises(RecipeError, match="\"lbfgs\" is not one the key accepts"):
        recipe_from_dict(raw, "r.json")
    raw["search"]["model.strategy"] = {"choice": ["linear_probe", "full"]}
    assert recipe_from_dict(raw, "r.json").search == raw["search"]


def test_validate_checks_the_search_block_and_train_refuses_it(tmp_path: Path, capsys) -> None:
    bad = _write(tmp_path / "bad.json", _raw("m", "d", tmp_path / "o", {"training.lr": LR}))
    assert main(["validate", str(bad)]) == 2
    assert "'search' key 'training.lr' is not a recipe key" in capsys.readouterr().err
    good = _write(tmp_path / "good.json", _raw("m", "d", tmp_path / "o"))
    assert main(["validate", str(good)]) == 0
    assert main(["train", "--recipe", str(good)]) == 2
    assert f"run `finetune search {good} --trials N`" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_search_refuses_what_it_cannot_do_before_loading(tmp_path: Path) -> None:
    def problem(raw: dict, **options) -> str:
        with pytest.raises(SearchError) as err:
            check(recipe_from_dict(raw), Options(trials=3, **options), "r.json")
        return str(err.value)

    base = _raw("m", "d", tmp_path / "o")
    assert "no 'search' block" in problem({k: v for k, v in base.items() if k != "search"})
    assert "trials are scored on the validation piece" in problem({**base, "data": {"dataset": "d", "validation_fraction": 0}})
    null_eval = {**base, "data": {"dataset": "d", "eval_split": None, "validation_fraction": 0.2}}
    assert "pass --no-final" in problem(null_eval)
    check(recipe_from_dict(null_eval), Options(trials=3, final=False), "r.json")  # fine without a final run
    assert "is a continuous range" in problem(base, sampler="grid")


def test_the_objective_follows_metric_for_best_model() -> None:
    base = _raw("m", "d", Path("/tmp/o"))
    assert objective(recipe_from_dict(base)) == ("accuracy", "maximize")
    loss = {**base, "training": {**base["training"], "metric_for_best_model": "eval_loss"}}
    assert objective(recipe_from_dict(loss)) == ("loss", "minimize")


def test_trials_save_no_checkpoint_unless_the_best_epoch_is_loaded_back(tmp_path: Path) -> None:
    raw = _raw("m", "d", tmp_path / "o")
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


def test_search_help_and_a_bad_search_block_import_no_heavy_library(tmp_path: Path) -> None:
    from tests.helpers.cli import HEAVY, IMPORT_PROBE

    bad = _write(tmp_path / "bad.json", _raw("m", "d", tmp_path / "o", {"training.lr": LR}))
    argvs = [["search", "--help"], ["search", str(bad), "--trials", "3"], ["validate", str(bad)]]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE, json.dumps(argvs), json.dumps(HEAVY + ("optuna",))],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 2, 2], "loaded": []}, result.stderr[-3000:]
    assert result.stderr.count("'search' key 'training.lr' is not a recipe key") == 2


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
    recipe = _write(root / "r.json", _raw(tiny_resnet, images, root / "out", {
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
    recipe = _write(tmp_path / "r.json", _raw(tiny_resnet, images, tmp_path / "out", {
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
    recipe = _write(tmp_path / "r.json", _raw(
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
    recipe = _write(tmp_path / "r.json", _raw(
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
    finished = len(_rows(out))
    resumed = run_cli("search", str(recipe), "--trials", "4", "--no-final")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"search: {finished} of 4 trial(s) done" in resumed.stderr
    assert "was cut off when the search stopped; it runs again" in resumed.stderr
    rows = _rows(out)
    cut = [r for r in rows if r["state"] == "fail"]
    assert len(cut) == 1 and cut[0]["note"].startswith("interrupted")
    assert sum(r["state"] == "complete" for r in rows) == 4
    # The cut-off trial ran again with its values.
    again = [r for r in rows if r["state"] == "complete" and r["training.learning_rate"] == cut[0]["training.learning_rate"]]
    assert len(again) == 1 and int(again[0]["trial"]) > int(cut[0]["trial"])


@pytest.mark.e2e
def test_a_search_on_two_processes(tmp_path: Path, tiny_resnet: Path, monkeypatch) -> None:
    """Every trial on both ranks (torchrun, gloo): the main process samples, the other follows."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    images = make_image_folder(tmp_path / "images", per_class=12)
    recipe = _write(tmp_path / "r.json", _raw(tiny_resnet, images, tmp_path / "out", training={"per_device_train_batch_size": 4}))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    result = run_cli("search", str(recipe), "--trials", "3", launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(tmp_path / "out")
    assert [r["state"] for r in rows] == ["complete"] * 3
    assert result.stderr.count("finetune: search: trial ") == 3  # logged by the main process alone
    assert "2 process(es)" in result.stderr
    final = json.loads((tmp_path / "out" / "final" / "eval_results.json").read_text())
    assert final["eval_num_images"] == 18  # every test image once, across both ranks
