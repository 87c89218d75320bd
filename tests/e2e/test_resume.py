"""Interrupted runs resume exactly: kill -9, SIGTERM and Ctrl-C during and after training, and a checkpoint cut off mid-write."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from finetune.training.output_dir import HOLDER_NAME, LOCK_NAME, last_complete_checkpoint
from tests.helpers import ROOT
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.images import make_image_folder
from tests.helpers.runs import saved_weights


@pytest.fixture(scope="module")
def resumable(tmp_path_factory, tiny_vit) -> tuple[Path, Path]:
    """A recipe of 3 epochs × 27 steps, and its uninterrupted result. Every kind of random
    augmentation is on, and every regulariser (mixup and CutMix, the class-balanced sampler,
    label smoothing, the EMA of the weights, which the saved model is), so resuming exactly
    also shows that each of them is seeded or checkpointed."""
    root = tmp_path_factory.mktemp("resume")
    images = make_image_folder(root / "images", per_class=40, splits=("train", "test"))
    recipe = write_recipe(
        root / "recipe.json", tiny_vit, images, root / "reference",
        data__augment={"crop_scale": [0.5, 1.0], "hflip": True, "preset": "trivial_augment", "random_erasing": 0.25,
                       "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "mix_prob": 0.8},
        data__sampler="balanced",
        training={"num_train_epochs": 3, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "seed": 0,
                  "use_cpu": True, "disable_tqdm": True, "save_total_limit": 2,
                  "label_smoothing_factor": 0.1, "ema_decay": 0.9},
    )
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    return recipe, root / "reference"


def _start(recipe: Path, out: Path):
    import subprocess

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(ROOT / "finetune" / "run.py"), "--recipe", str(recipe), "--set", f"output_dir={out}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _first_checkpoint(out: Path, proc, timeout: float = 120.0) -> int:
    """Wait until the end-of-epoch-1 checkpoint is complete; return its step."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        done = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        if done:
            time.sleep(0.05)  # let the Trainer finish writing that file
            return int(done[0].name.split("-")[1])
        assert proc.poll() is None, f"run ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


@pytest.mark.e2e
def test_kill_9_then_rerun_gives_identical_weights(resumable, tmp_path: Path) -> None:
    import signal

    recipe, reference = resumable
    out = tmp_path / "killed"
    proc = _start(recipe, out)
    _first_checkpoint(out, proc)  # end of epoch 1: the kill lands in epoch 2
    assert proc.poll() is None and not (out / "model.safetensors").exists(), "finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / LOCK_NAME).exists() and (out / HOLDER_NAME).exists()  # the dead run's lock does not block:
    resumed = run_cli("--recipe", str(recipe), "--set", f"output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    ours, theirs = saved_weights(out), saved_weights(reference)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "resumed weights differ from an uninterrupted run"
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == json.loads(
        (reference / "eval_results.json").read_text()
    )["eval_accuracy"]


@pytest.mark.e2e
@pytest.mark.parametrize("name, exit_code", [("SIGTERM", 143), ("Ctrl-C", 130)])
def test_a_signal_writes_a_checkpoint_and_exits_128_plus_its_number(resumable, tmp_path: Path, name, exit_code) -> None:
    """SIGTERM (a pre-empted job) and Ctrl-C (SIGINT) alike."""
    import signal

    recipe, reference = resumable
    out = tmp_path / "preempted"
    proc = _start(recipe, out)
    epoch = _first_checkpoint(out, proc)
    proc.send_signal(signal.SIGTERM if name == "SIGTERM" else signal.SIGINT)  # in epoch 2: the checkpoint comes at the end of that step
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == exit_code, stderr[-2000:]
    assert f"stopped by {name}" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert epoch < steps[-1] < 3 * epoch and not (out / "model.safetensors").exists()
    assert stderr.strip().splitlines()[-1] == (
        f"finetune: stopped by {name} at step {steps[-1]} of {3 * epoch}; run the same command again to continue: "
        f"it resumes from {out / f'checkpoint-{steps[-1]}'}"
    )
    again = run_cli("--recipe", str(recipe), "--set", f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"checkpoint-{steps[-1]}" in again.stderr
    ours, theirs = saved_weights(out), saved_weights(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "a stopped run must end where an uninterrupted one does"


@pytest.mark.e2e
def test_sigterm_after_training_stops_at_once_and_a_rerun_finishes(resumable, tmp_path: Path) -> None:
    """A signal during the final save or evaluation: nothing more is done, one line says
    what is saved, and the same command finishes the run from the last checkpoint."""
    import signal

    recipe, reference = resumable
    out = tmp_path / "finishing"
    shutil.copytree(reference, out)
    # The folder as a run leaves it when stopped right after its last checkpoint.
    for path in out.iterdir():
        if path.is_file() and path.name not in ("recipe.json", "data_report.json", LOCK_NAME):
            path.unlink()
    last = last_complete_checkpoint(out)
    proc = _start(recipe, out)
    for line in proc.stdout:  # resumed with nothing left to train: the model is saved, the final evaluation next
        if "***** train metrics *****" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"finetune: stopped by SIGTERM after training had finished (step 81): the model is saved in {out}; "
        "not done: final evaluation, report and card; run the same command again to finish: "
        f"it resumes from {last}, where training ended, and only redoes what comes after training"
    )
    assert not (out / "eval_results.json").exists() and not (out / "README.md").exists()
    again = run_cli("--recipe", str(recipe), "--set", f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {last}" in again.stderr
    ours, theirs = saved_weights(out), saved_weights(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    ours, theirs = (json.loads((d / "eval_results.json").read_text()) for d in (out, reference))
    speed = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    assert {k: v for k, v in ours.items() if k not in speed} == {k: v for k, v in theirs.items() if k not in speed}


@pytest.mark.e2e
def test_checkpoint_cut_off_mid_write_is_skipped(resumable, tmp_path: Path) -> None:
    _, reference = resumable
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    newest = last_complete_checkpoint(out)
    assert newest is not None and newest.endswith("checkpoint-81")
    broken = out / "checkpoint-999"
    shutil.copytree(newest, broken)
    state = json.loads((broken / "trainer_state.json").read_text())
    state["global_step"] = 999
    (broken / "trainer_state.json").write_text(json.dumps(state))
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    half_written = out / "checkpoint-1000"
    shutil.copytree(newest, half_written)
    (half_written / "trainer_state.json").unlink()  # killed before the Trainer's last file
    assert last_complete_checkpoint(out) == newest
