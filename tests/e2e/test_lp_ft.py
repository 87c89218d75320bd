"""LP-FT end to end: the probe phase fits what the linear probe fits, on train and validation
alone; the fine-tune then trains everything from it; the probed head is kept so resumed runs end exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from finetune.probe import head as probe
from finetune.recipe import recipe_from_dict
from finetune.training import lp_ft
from finetune.training import train as train_lib
from finetune.training.interrupts import Interrupted
from finetune.training.output_dir import LP_HEAD
from tests.helpers import ROOT
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.images import make_image_folder

HEAD = ("classifier.1.weight", "classifier.1.bias")  # the tiny ResNet's


def _recipe(tmp_path: Path, model: Path, images: Path, name: str, **model_keys) -> dict:
    path = write_recipe(
        tmp_path / f"{name}.json", model, images, tmp_path / name,
        model={"name_or_path": str(model), "strategy": "lp_ft", **model_keys}, metrics=["accuracy"],
    )
    raw = json.loads(path.read_text())
    raw["data"]["validation_fraction"] = 0.25
    raw["training"].update(num_train_epochs=2, learning_rate=0.01, save_strategy="epoch")
    return raw


def _probe_head(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / LP_HEAD)


def _record(out: Path) -> dict:
    with safe_open(str(out / LP_HEAD), framework="pt") as f:
        return json.loads(f.metadata()["finetune_lp_phase"])


@pytest.mark.e2e
def test_probe_phase_fits_the_linear_probes_head_on_train_and_validation_then_everything_trains(
    tiny_resnet: Path, tmp_path: Path, monkeypatch
) -> None:
    from transformers import pipeline

    images = make_image_folder(tmp_path / "images")
    # The same probe as a linear_probe run of the same recipe: the L-BFGS head on cached features.
    reference = _recipe(tmp_path, tiny_resnet, images, "probe", probe_solver="lbfgs", probe_l2=[1e-3])
    reference["model"]["strategy"] = "linear_probe"
    train_lib.train(recipe_from_dict(reference))
    probed = load_file(tmp_path / "probe" / "model.safetensors")

    seen: list[int] = []
    real = probe.compute_features

    def counting(model, dataset, *args, **kwargs):
        seen.append(len(dataset))
        return real(model, dataset, *args, **kwargs)

    monkeypatch.setattr(probe, "compute_features", counting)
    raw = _recipe(tmp_path, tiny_resnet, images, "lpft", probe_solver="lbfgs", probe_l2=[1e-3], layer_decay=0.8)
    final = train_lib.train(recipe_from_dict(raw))
    out = tmp_path / "lpft"

    splits = json.loads((out / "data_report.json").read_text())["splits"]
    assert seen == [splits["train"]["images"], splits["validation"]["images"]]  # never the eval split
    head = _probe_head(out)
    torch.testing.assert_close(head["weight"], probed[HEAD[0]], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head["bias"], probed[HEAD[1]], rtol=1e-4, atol=1e-5)

    base, trained = load_file(tiny_resnet / "model.safetensors"), load_file(out / "model.safetensors")
    params = {n for n, _ in _model(out).named_parameters()}
    same = [k for k in params - set(HEAD) if torch.equal(base[k], trained[k])]
    assert not same, f"the fine-tune phase left {same[:3]} as they were"
    assert not torch.equal(trained[HEAD[0]], head["weight"])  # the head trains on from the probe's fit

    results = json.loads((out / "train_results.json").read_text())
    assert results["lp_solver"] == "lbfgs" and results["lp_l2"] == 1e-3 and "lp_validation_accuracy" in results
    card = (out / "README.md").read_text()
    assert "Linear probe" in card and "L-BFGS" in card and "Fine-tune: every parameter trained" in card
    assert "model.layer_decay" in card
    assert final["eval_accuracy"] >= 0.9
    classifier = pipeline("image-classification", model=str(out))
    assert classifier(str(next((images / "test" / "green").iterdir())))[0]["label"] == "green"


def _model(out: Path):
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(out)


@pytest.mark.e2e
def test_the_trainer_solver_fits_for_lp_epochs_as_a_linear_probe_does(tiny_resnet: Path, tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images")
    reference = _recipe(tmp_path, tiny_resnet, images, "probe")
    reference["model"]["strategy"] = "linear_probe"
    reference["training"]["num_train_epochs"] = 3
    # The probe's head as fitted: a calibrated save would hold it divided by the temperature.
    reference["evaluation"] = {"calibrate": False}
    train_lib.train(recipe_from_dict(reference))
    raw = _recipe(tmp_path, tiny_resnet, images, "lpft", lp_epochs=3)
    raw["training"]["num_train_epochs"] = 1  # the fine-tune's, not the probe's
    train_lib.train(recipe_from_dict(raw))
    probed, head = load_file(tmp_path / "probe" / "model.safetensors"), _probe_head(tmp_path / "lpft")
    torch.testing.assert_close(head["weight"], probed[HEAD[0]], rtol=1e-4, atol=1e-5)
    from transformers.training_args import OptimizerNames

    settings = _record(tmp_path / "lpft")["settings"]
    assert settings.pop("optim") in {o.value for o in OptimizerNames}  # the Trainer's default, named
    assert settings == {"solver": "trainer", "lp_epochs": 3, "learning_rate": 0.01, "per_device_train_batch_size": 8}


@pytest.mark.e2e
def test_a_signal_in_the_probe_phase_keeps_its_head_and_the_rerun_ends_as_an_uninterrupted_run(
    tiny_resnet: Path, tmp_path: Path, monkeypatch
) -> None:
    images = make_image_folder(tmp_path / "images")
    raw = _recipe(tmp_path, tiny_resnet, images, "reference", probe_solver="lbfgs", probe_l2=[1e-3], layer_decay=0.8)
    train_lib.train(recipe_from_dict(raw))

    real_train = probe.FeatureProbeTrainer.train

    def signalled(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # in the probe's solve: the handler notes it; the solve runs to its end
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(probe.FeatureProbeTrainer, "train", signalled)
    raw["output_dir"] = str(tmp_path / "stopped")
    with pytest.raises(Interrupted) as stopped:
        train_lib.train(recipe_from_dict(raw))
    out = tmp_path / "stopped"
    assert str(stopped.value) == (
        f"stopped by SIGTERM after the linear-probe phase of lp_ft: its head is saved in {out / LP_HEAD}; "
        "run the same command again to continue: it fine-tunes from that head"
    )
    assert not list(out.glob("checkpoint-*"))
    kept = (out / LP_HEAD).read_bytes()

    monkeypatch.setattr(probe.FeatureProbeTrainer, "train", real_train)
    monkeypatch.setattr(lp_ft, "_fit", lambda *a, **k: pytest.fail("the probe was fitted again"))
    train_lib.train(recipe_from_dict(raw))
    assert (out / LP_HEAD).read_bytes() == kept
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "reference" / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "the rerun must end where an uninterrupted run does"


@pytest.mark.e2e
def test_kill_9_in_the_fine_tune_then_rerun_gives_identical_weights(tiny_resnet: Path, tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=24)
    raw = _recipe(tmp_path, tiny_resnet, images, "reference", probe_solver="lbfgs", probe_l2=[1e-3], layer_decay=0.8)
    raw["training"].update(num_train_epochs=3, per_device_train_batch_size=4, learning_rate=1e-3)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(raw))
    reference = run_cli("--recipe", str(recipe))
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "finetune" / "run.py"), "--recipe", str(recipe), "--set", f"output_dir={out}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while not [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]:
        assert proc.poll() is None, f"run ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    time.sleep(0.05)  # let the Trainer finish writing that file
    assert proc.poll() is None and not (out / "model.safetensors").exists(), "finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kept = (out / LP_HEAD).read_bytes()

    resumed = run_cli("--recipe", str(recipe), "--set", f"output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "not fitted again" in resumed.stderr
    assert "model.layer_decay 0.8" in resumed.stderr
    assert (out / LP_HEAD).read_bytes() == kept
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "reference" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "resumed weights differ from an uninterrupted run"
    ours_r, theirs_r = (json.loads((d / "train_results.json").read_text()) for d in (out, tmp_path / "reference"))
    assert {k: v for k, v in ours_r.items() if k.startswith("lp_")} == lp_ft.train_metrics(_record(out))  # the first attempt's
    timing = ("runtime", "per_second")
    assert {k: v for k, v in ours_r.items() if k.startswith("lp_") and not k.endswith(timing)} == {
        k: v for k, v in theirs_r.items() if k.startswith("lp_") and not k.endswith(timing)
    }


@pytest.mark.e2e
@pytest.mark.parametrize(("strategy", "solver"), [("lp_ft", "lbfgs"), ("lp_ft", "trainer"), ("linear_probe", "trainer")])
def test_label_smoothing_trains_with_a_probe_on_cached_features(
    tiny_resnet: Path, tmp_path: Path, strategy: str, solver: str
) -> None:
    """The Trainer reads the model's config when label smoothing is on; the head-only model
    of a cached-feature probe must answer with the full model's (it once raised there)."""
    images = make_image_folder(tmp_path / "images")
    raw = _recipe(tmp_path, tiny_resnet, images, "smooth", probe_solver=solver, probe_l2=[1e-3])
    raw["model"]["strategy"] = strategy
    raw["training"].update(label_smoothing_factor=0.1, num_train_epochs=1)
    train_lib.train(recipe_from_dict(raw))
    assert (tmp_path / "smooth" / "model.safetensors").is_file()
