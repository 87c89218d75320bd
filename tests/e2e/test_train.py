"""End to end through the real command line, and the Trainer's input contract."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch

from finetune.recipe import recipe_from_dict
from finetune.training.arguments import training_arguments
from finetune.training.output_dir import HOLDER_NAME, LOCK_NAME, OutputLock, last_complete_checkpoint
from finetune.training.trainer import FinetuneTrainer
from tests.helpers import CIFAR10, ROOT
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.disk import leave_free
from tests.helpers.images import CLASSES, make_image_folder
from tests.helpers.models import make_tiny_vit

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu"]
EXPECTED_FILES = [
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
    "train_results.json",
    "eval_results.json",
    "all_results.json",
    "recipe.json",
    "README.md",
    "eval_report.json",
    "data_report.json",
]


def folder_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_vit) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("e2e")
    images = make_image_folder(root / "images", per_class=16)
    recipe = write_recipe(root / "recipe.json", tiny_vit, images, root / "out")
    umask = os.umask(0o022)  # the usual one, whatever the test runner's is
    try:
        result = run_cli("--recipe", str(recipe), launcher=ACCELERATE)
    finally:
        os.umask(umask)
    return root, recipe, result


@pytest.mark.e2e
def test_accelerate_launch_run_leaves_every_output(trained) -> None:
    root, _, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    out = root / "out"
    for name in EXPECTED_FILES:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(CLASSES)
    results = json.loads((out / "eval_results.json").read_text())
    for key in ("eval_accuracy", "eval_f1", "eval_precision", "eval_recall"):
        assert 0.0 <= results[key] <= 1.0
    assert results["eval_num_images"] == 3 * 8  # every test image, once
    assert results["eval_accuracy"] >= 0.6  # the colours are easy to tell apart
    resolved = json.loads((out / "recipe.json").read_text())
    assert resolved["data"]["validation_fraction"] == 0.1 and resolved["model"]["strategy"] == "full"
    assert "training: effective batch 8 = 8 per device × 1 process(es)" in result.stderr
    assert re.search(r"threads: \d+ CPU thread\(s\) \(", result.stderr)  # the benchmark parses it


@pytest.mark.e2e
@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
def test_every_written_file_follows_the_umask(trained) -> None:
    """Under umask 022 every file is 0644 and every folder 0755: the weights too, which
    safetensors writes as a private (0600) temporary file renamed into place."""
    root, _, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    out = root / "out"
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert "model.safetensors" in modes and any(name.startswith("checkpoint-") for name in modes)
    wrong = {
        name: oct(mode) for name, mode in modes.items() if mode != (0o755 if (out / name).is_dir() else 0o644)
    }
    assert not wrong


@pytest.mark.e2e
def test_pipeline_returns_class_names(trained) -> None:
    from PIL import Image
    from transformers import pipeline

    root, _, _ = trained
    classifier = pipeline("image-classification", model=str(root / "out"))
    image = Image.open(next((root / "images" / "test" / "green").iterdir()))
    labels = [row["label"] for row in classifier(image, top_k=3)]
    assert sorted(labels) == sorted(CLASSES)


@pytest.mark.e2e
def test_card_metadata_matches_eval_results(trained) -> None:
    from huggingface_hub import ModelCard

    root, _, _ = trained
    out = root / "out"
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-classification"
    results = json.loads((out / "eval_results.json").read_text())
    reported = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert reported["accuracy"] == pytest.approx(results["eval_accuracy"])
    assert reported["f1"] == pytest.approx(results["eval_f1"])
    assert data["model-index"][0]["results"][0]["dataset"]["split"] == "test"
    assert "| blue |" in card.text and "test recipe" in card.text


@pytest.mark.e2e
def test_same_recipe_resumes_and_other_recipe_is_refused(trained) -> None:
    root, recipe, _ = trained
    out = root / "out"
    before = folder_digest(out)
    other = run_cli("--recipe", str(recipe), "--set", "training.learning_rate=0.5")
    assert other.returncode == 2
    message = other.stderr.strip().splitlines()[-1]
    assert "holds a run of a different recipe" in message and "training.learning_rate: 0.01 → 0.5" in message
    assert folder_digest(out) == before  # nothing touched

    again = run_cli("--recipe", str(recipe))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr


@pytest.mark.e2e
def test_foreign_folder_is_untouched_unless_overwrite(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, out, training__num_train_epochs=1)
    refused = run_cli("--recipe", str(recipe))
    assert refused.returncode == 2 and "not a finetune run (thesis.tex)" in refused.stderr
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


@pytest.mark.e2e
def test_eval_split_null_reports_validation_piece(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=10, splits=("",))
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, images, tmp_path / "out",
        data={"dataset": str(images), "eval_split": None, "validation_fraction": 0.3},
        training={"num_train_epochs": 1, "use_cpu": True, "per_device_train_batch_size": 8},
    )
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["eval_num_images"] == 9  # 30% of 30 images, stratified
    card = (tmp_path / "out" / "README.md").read_text()
    assert "validation piece" in card and "less independent than a test split" in card


@pytest.mark.e2e
def test_missing_eval_split_fails_before_training(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=4, splits=("",))
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, tmp_path / "out")
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 2
    assert "data.eval_split: 'test' is not a split" in result.stderr and "set data.eval_split to null" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_model_receives_normalised_float_pixels(tiny_vit: Path, tmp_path: Path) -> None:
    """The Trainer must feed normalised floats: a model given raw 0-255 integers would
    silently cast them and still train (this happened once)."""
    from transformers import AutoModelForImageClassification

    from finetune.data import BatchTransform

    model = AutoModelForImageClassification.from_pretrained(tiny_vit)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["pixel_values"]), with_kwargs=True)
    recipe = recipe_from_dict({"description": "d", "model": {"name_or_path": str(tiny_vit)},
                               "data": {"dataset": "x"}, "output_dir": str(tmp_path / "o"),
                               "training": {"use_cpu": True, "eval_strategy": "no"}})
    args = training_arguments(recipe)
    trainer = FinetuneTrainer(
        model=model, args=args, batch_transform=BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None)
    )
    batch = {"pixel_values": torch.full((2, 3, 32, 32), 255, dtype=torch.uint8), "labels": torch.tensor([0, 1])}
    trainer.compute_loss(model, batch)
    assert seen[0].dtype == torch.float32 and torch.allclose(seen[0], torch.ones_like(seen[0]))


def test_trainer_reads_fastrows_through_its_public_loaders(tiny_vit: Path, tmp_path: Path) -> None:
    """Decoded splits go to the Trainer already in data.FastRows (no private loader override):
    its loaders then gather each batch from the cache, as uint8 pixels and labels."""
    from datasets import load_dataset
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from finetune import data

    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    raw = load_dataset(str(make_image_folder(tmp_path / "images", per_class=3, splits=("train",))))["train"]
    rows = data.FastRows.wrap(data.decode(raw, processor, "image", "label", None, "decoding").dataset)
    assert isinstance(rows, data.FastRows)
    recipe = recipe_from_dict({"description": "d", "model": {"name_or_path": str(tiny_vit)},
                               "data": {"dataset": "x"}, "output_dir": str(tmp_path / "o"),
                               "training": {"use_cpu": True, "per_device_train_batch_size": 4}})
    trainer = FinetuneTrainer(
        model=AutoModelForImageClassification.from_pretrained(tiny_vit), args=training_arguments(recipe),
        train_dataset=rows, eval_dataset=rows, data_collator=data.collate,
        batch_transform=data.BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None),
    )
    for loader in (trainer.get_train_dataloader(), trainer.get_eval_dataloader(rows)):
        assert loader.dataset is rows
        batch = next(iter(loader))
        # The fixture's 24-px images are cached at their own size, below the model's 32 px.
        assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (4, 3, 24, 24)
        assert batch["labels"].shape == (4,)


@pytest.mark.e2e
@pytest.mark.skipif(not CIFAR10.is_dir(), reason="../shared/datasets/cifar10 is not present")
def test_tiny_vit_on_real_cifar10(tmp_path: Path) -> None:
    """A tiny ViT on 2,000 real CIFAR-10 images, set from the command line: every output, the real class names."""
    from transformers import pipeline

    vit = make_tiny_vit(tmp_path / "vit", image_size=32, num_labels=3)
    out = tmp_path / "out"
    result = run_cli(
        "--recipe", str(ROOT / "recipes" / "cifar10_vit.json"),
        "--set", f"model.name_or_path={vit}",
        "--set", f"data.dataset={CIFAR10}",
        "--set", "data.max_train_samples=2000",
        "--set", "data.max_eval_samples=500",
        "--set", "training.num_train_epochs=1",
        "--set", "training.per_device_train_batch_size=64",
        "--set", "training.use_cpu=true",
        "--set", "training.disable_tqdm=true",
        "--set", f"output_dir={out}",
        launcher=ACCELERATE,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in EXPECTED_FILES:
        assert (out / name).is_file(), name
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_num_images"] == 500
    classifier = pipeline("image-classification", model=str(out))
    from datasets import load_dataset

    image = load_dataset(str(CIFAR10), split="test[:1]")[0]["img"]
    names = {row["label"] for row in classifier(image, top_k=10)}
    assert names == {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


# ------------------------------------------------------------------ interrupted runs


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


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
    import os
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
    ours, theirs = _weights(out), _weights(reference)
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
    ours, theirs = _weights(out), _weights(reference)
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
    ours, theirs = _weights(out), _weights(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    ours, theirs = (json.loads((d / "eval_results.json").read_text()) for d in (out, reference))
    speed = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    assert {k: v for k, v in ours.items() if k not in speed} == {k: v for k, v in theirs.items() if k not in speed}


@pytest.mark.e2e
def test_a_second_run_into_a_folder_in_use_stops_at_once(tmp_path: Path, tiny_vit: Path) -> None:
    """Two runs into one output_dir: the one that finds it locked stops, naming the other,
    and touches nothing."""
    import socket

    images = make_image_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, out, training__num_train_epochs=1)
    out.mkdir()
    first = OutputLock(out).acquire()  # what a run holds from start to end, here held by this test
    first.write_holder()
    try:
        before = folder_digest(out)
        second = run_cli("--recipe", str(recipe))
        assert folder_digest(out) == before
    finally:
        first.release()
    assert second.returncode == 2, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    message = second.stderr.strip().splitlines()[-1]
    assert message.startswith(
        f"finetune: error: output_dir: '{out}' is in use by another finetune run "
        f"(pid {os.getpid()} on {socket.gethostname()}, started "
    )
    assert message.endswith("wait for it to finish or choose another output_dir (--set output_dir=...)")


@pytest.mark.e2e
def test_full_disk_is_one_line_and_each_rerun_continues(small_disk: Path, tmp_path: Path, tiny_vit: Path) -> None:
    """A real full file system: at a checkpoint (torch.save's own error), then at the final
    save (safetensors'); each time one line, exit 2, nothing half-written kept, and the same
    command continues once there is space."""
    images = make_image_folder(tmp_path / "images", per_class=8)
    out = small_disk / "out"
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, out)  # 2 epochs of 3 steps

    def disk_full_line(free: int, what: str, then: str) -> str:
        leave_free(small_disk, free)
        result = run_cli("--recipe", str(recipe))
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith(f"finetune: error: output_dir: the disk is full where '{out}' is ({what} needs about ")
        assert message.endswith(f"free some space and run the same command again: {then}")
        return message

    # checkpoint-3 (~360 KB: weights 100 KB, optimizer 225 KB, …) fits; checkpoint-6 does not.
    disk_full_line(540_000, "a checkpoint", f"it resumes from {out / 'checkpoint-3'}")
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]  # the cut-off checkpoint-6 is gone
    # checkpoint-6 fits now, the final model (100 KB) after it does not.
    then = f"it resumes from {out / 'checkpoint-6'}, where training ended, and only redoes what comes after training"
    disk_full_line(410_000, "the model", then)
    assert not (out / "model.safetensors").exists()

    (small_disk / "filler").unlink()
    third = run_cli("--recipe", str(recipe))
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-6'}" in third.stderr
    for name in EXPECTED_FILES:
        assert (out / name).is_file(), name


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


@pytest.mark.e2e
def test_load_best_model_at_end_really_loads_the_best_weights(tmp_path: Path, tiny_vit: Path) -> None:
    """transformers 5 reloads the best checkpoint with load_state_dict(strict=False) on
    legacy key names and silently keeps the last weights; FinetuneTrainer must not."""
    images = make_image_folder(tmp_path / "images", per_class=12)
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, images, tmp_path / "out",
        training={"num_train_epochs": 3, "learning_rate": 0.05, "per_device_train_batch_size": 4, "seed": 0,
                  "use_cpu": True, "disable_tqdm": True, "save_total_limit": 3,
                  "load_best_model_at_end": True, "metric_for_best_model": "loss"},
    )
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"])
    final, chosen = _weights(tmp_path / "out"), _weights(tmp_path / "out" / best.name)
    assert all(torch.equal(final[k], chosen[k]) for k in final)


@pytest.mark.e2e
def test_early_stopping_stops_when_validation_stops_improving(tmp_path: Path, tiny_vit: Path) -> None:
    """No change can beat a threshold of 1e9: with patience 1, the second evaluation without
    enough improvement ends training after epoch 2 of 5."""
    images = make_image_folder(tmp_path / "images", per_class=8)
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, images, tmp_path / "out",
        training={"num_train_epochs": 5, "per_device_train_batch_size": 8, "seed": 0, "use_cpu": True,
                  "disable_tqdm": True, "early_stopping_patience": 1, "early_stopping_threshold": 1e9},
    )
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["epoch"] == 2.0 and state["global_step"] < state["max_steps"]
    assert "training: stopped early at step" in result.stderr
    assert state["best_model_checkpoint"] is not None  # load_best_model_at_end came on by default


# ---------------------------------------------------------------------- messy folders


def _messy_folder(root: Path) -> dict[str, str]:
    """Good images of every odd kind, plus bad files and junk; returns {bad file: kind}."""
    import io

    import numpy as np
    from PIL import Image

    from tests.helpers.images import odd_images, png_claiming

    make_image_folder(root, per_class=10)
    odd = odd_images()
    for i, (name, raw) in enumerate(sorted(odd.items())):
        folder = root / "train" / CLASSES[i % 3]
        (folder / f"odd_{name}.{'JPG' if name in ('exif', 'cmyk') else 'png'}").write_bytes(raw)
    bad = {
        "train/red/empty.png": b"",
        "train/green/notes.jpg": b"this is not an image",
        "train/blue/bomb.png": png_claiming(20000, 20000),
    }
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="JPEG")
    bad["train/red/truncated.jpg"] = buf.getvalue()[:200]
    for rel, raw in bad.items():
        (root / rel).write_bytes(raw)
    (root / "train" / "red" / ".DS_Store").write_bytes(b"\0junk")
    (root / "train" / "Thumbs.db").write_bytes(b"junk")
    (root / "__MACOSX" / "train" / "red").mkdir(parents=True)
    (root / "__MACOSX" / "train" / "red" / "._red_0.png").write_bytes(b"\0\5\26\7 AppleDouble")
    unicode_class = root / "train" / "Ünïcödé 猫"
    unicode_class.mkdir()
    for i in range(4):
        (unicode_class / f"cat_{i}.JPG").write_bytes(odd["exif"])
    return bad


@pytest.mark.e2e
def test_messy_folder_trains_and_reports_every_bad_file(tmp_path: Path, tiny_vit: Path) -> None:
    images = tmp_path / "messy"
    bad = _messy_folder(images)
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, images, tmp_path / "out",
        data={"dataset": str(images), "max_bad_fraction": 0.1, "validation_fraction": 0.1},
        training={"num_train_epochs": 1, "use_cpu": True, "per_device_train_batch_size": 8, "disable_tqdm": True},
    )
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    reported = {Path(b["path"]).relative_to(images).as_posix(): b["reason"] for b in report["bad_files"]}
    assert set(reported) == set(bad), reported
    assert "DecompressionBomb" in reported["train/blue/bomb.png"]
    assert report["junk_files_ignored"] == 3
    assert "4 unreadable file(s) set aside" in result.stderr and "3 junk file(s) ignored" in result.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert set(config["id2label"].values()) == set(CLASSES) | {"Ünïcödé 猫"}  # never "train"/"test"


@pytest.mark.e2e
def test_too_many_bad_files_stop_before_training(tmp_path: Path, tiny_vit: Path) -> None:
    images = tmp_path / "messy"
    _messy_folder(images)
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, tmp_path / "out")  # default 1% threshold
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert "cannot be read" in message and "data.max_bad_fraction 0.01" in message
    assert (tmp_path / "out" / "data_report.json").is_file()
    assert not (tmp_path / "out" / "model.safetensors").exists() and not list((tmp_path / "out").glob("checkpoint-*"))


@pytest.mark.e2e
def test_a_run_that_stopped_before_training_does_not_block_the_folder(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "out"
    broken = write_recipe(tmp_path / "broken.json", tmp_path / "no-such-model", images, out)
    assert run_cli("--recipe", str(broken)).returncode == 2
    assert {p.name for p in out.iterdir()} <= {"recipe.json", "data_report.json", LOCK_NAME}
    fixed = write_recipe(tmp_path / "fixed.json", tiny_vit, images, out, training__num_train_epochs=1)
    result = run_cli("--recipe", str(fixed))
    assert result.returncode == 0, result.stderr[-2000:]
