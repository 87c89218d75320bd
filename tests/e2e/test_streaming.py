"""The streaming path end to end: a streamed run writes nothing but its output folder, resumes after kill -9 mid-epoch with the weights of a run that never stopped, on two CPU processes reads every image exactly once per epoch and scores every eval image once, and trains on shards of unknown sizes for max_steps, resuming after kill -9 the same way."""

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

from tests.helpers import ROOT
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.images import make_image_folder
from tests.helpers.runs import saved_weights

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


@pytest.fixture(autouse=True)
def offline_cache(monkeypatch, tmp_path: Path) -> Path:
    """A datasets cache of the test's own, to show that streaming writes nothing into it."""
    cache = tmp_path / "hf-datasets-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache


def _recipe(path: Path, model: Path, images: Path, out: Path, **training) -> Path:
    return write_recipe(
        path, model, images, out,
        data={"dataset": str(images), "streaming": True, "validation_fraction": 0.1,
              "augment": {"crop_scale": [0.5, 1.0], "hflip": True, "preset": "trivial_augment",
                          "random_erasing": 0.25, "mixup_alpha": 0.4, "mix_prob": 0.8}},
        training={"num_train_epochs": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "seed": 0,
                  "use_cpu": True, "disable_tqdm": True, "dataloader_num_workers": 2, **training},
    )


def test_a_streamed_run_writes_only_its_output_folder(tmp_path: Path, tiny_vit: Path, offline_cache: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=10)
    recipe = _recipe(tmp_path / "r.json", tiny_vit, images, tmp_path / "out")
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: streaming (data.streaming is true)" in result.stderr
    assert list(offline_cache.rglob("*")) == [], "streaming wrote into the datasets cache"
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["input"]["path"] == "streaming" and report["input"]["source"] == "image folder"
    assert report["splits"]["train"]["images"] + report["splits"]["validation"]["images"] == 30
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["eval_num_images"] == 15  # the test split, every image once
    card = (tmp_path / "out" / "README.md").read_text()
    assert "in the loader workers, cropped from each original image" in card
    assert (tmp_path / "out" / "misclassified.png").is_file()


def _wait_for_checkpoint(out: Path, step: int, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not (out / f"checkpoint-{step}" / "trainer_state.json").is_file():
        assert proc.poll() is None, f"run ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    time.sleep(0.05)  # the Trainer's last file, written

def _killed_at_step_3_then_rerun(recipe: Path, out: Path) -> subprocess.CompletedProcess:
    """The recipe run into ``out``, killed with SIGKILL once its step-3 checkpoint is there,
    then run again to the end: the rerun's result."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "finetune" / "run.py"), "--recipe", str(recipe), "--set", f"output_dir={out}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _wait_for_checkpoint(out, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "finished before the kill"
    resumed = run_cli("--recipe", str(recipe), "--set", f"output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return resumed



def test_kill_9_mid_epoch_then_rerun_gives_identical_weights(tmp_path: Path, tiny_vit: Path) -> None:
    """27 training images in batches of 4: 7 steps an epoch; the checkpoint at step 3 is in
    the middle of the first epoch, with every random augmentation on."""
    images = make_image_folder(tmp_path / "images", per_class=10)
    recipe = _recipe(tmp_path / "r.json", tiny_vit, images, tmp_path / "reference", save_strategy="steps",
                     save_steps=3, eval_strategy="steps", eval_steps=3, save_total_limit=10)
    reference = run_cli("--recipe", str(recipe))
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "killed"
    resumed = _killed_at_step_3_then_rerun(recipe, out)
    assert "resuming from" in resumed.stderr and "the stream resumes at epoch 0, batch" in resumed.stderr
    ours, theirs = saved_weights(out), saved_weights(tmp_path / "reference")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "resumed weights differ from an uninterrupted run"
    assert json.loads((out / "eval_results.json").read_text())["eval_loss"] == json.loads(
        (tmp_path / "reference" / "eval_results.json").read_text()
    )["eval_loss"]


EXACTLY_ONCE = r"""
import json, os, sys, zlib
import torch
from finetune.data.streaming.stream import ImageStream
from finetune.data.streaming.open import open_stream
from finetune.recipe import DataConfig

class Tag:
    size = (1, 2)
    def __call__(self, pixels, key, epoch, train):
        code = zlib.crc32(key.encode())
        return torch.tensor(list(code.to_bytes(4, "little"))[:6] + [0, 0], dtype=torch.uint8)[:6].view(3, 1, 2)

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # torchrun's
source = open_stream(DataConfig(dataset=sys.argv[1], eval_split=None), ["train"])
stream = ImageStream(source.splits["train"], Tag(), batch=4, train=True, seed=0, world=world, rank=rank, lanes=2,
                     buffer=8)
out = {}
for epoch in (0, 1):
    stream.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    out[epoch] = [[int.from_bytes(bytes(row[:4].tolist()), "little") for row in b["pixel_values"].reshape(len(b["labels"]), -1)]
                  for b in loader]
json.dump({"keys": sorted(zlib.crc32(str(k).encode()) for k in source.splits["train"].keys), "batches": out},
          open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w"))
"""


@pytest.mark.parametrize("per_class", [7, 8])  # 21 and 24 images: uneven and even shares
def test_two_processes_read_every_image_exactly_once_per_epoch(tmp_path: Path, per_class: int) -> None:
    images = make_image_folder(tmp_path / "images", per_class=per_class, splits=("",))
    script = tmp_path / "once.py"
    script.write_text(EXACTLY_ONCE)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(TORCHRUN + ["--master_port", str(29600 + per_class), str(script), str(images), str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        counts = [len(rank["batches"][epoch]) for rank in ranks]
        assert counts[0] == counts[1], "both processes make the same number of batches"
        seen = [key for rank in ranks for batch in rank["batches"][epoch] for key in batch]
        assert sorted(seen) == ranks[0]["keys"], "every image exactly once across the two processes"
    assert ranks[0]["batches"]["0"] != ranks[0]["batches"]["1"]


def test_a_streamed_run_on_two_processes_scores_every_eval_image_once(tmp_path: Path, tiny_vit: Path, monkeypatch) -> None:
    images = make_image_folder(tmp_path / "images", per_class=9)  # 27 train, 4 per class in test: 12, odd shares
    recipe = _recipe(tmp_path / "r.json", tiny_vit, images, tmp_path / "out", per_device_eval_batch_size=5)
    env_launcher = TORCHRUN + ["--master_port", "29611"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two ranks on two cores
    result = run_cli("--recipe", str(recipe), launcher=env_launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("effective batch 8 = 4 per device × 2 process(es)") == 1
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    report = json.loads((tmp_path / "out" / "eval_report.json").read_text())
    assert results["eval_num_images"] == 12 and sum(r["support"] for r in report["per_class"].values()) == 12


@pytest.mark.parametrize("kind", ["parquet", "tars"])
def test_sharded_sources_train_with_a_hashed_validation_piece(tmp_path: Path, tiny_vit: Path, kind: str) -> None:
    from tests.helpers.streams import write_parquet, write_tars

    if kind == "parquet":
        dataset = write_parquet(tmp_path / "d" / "train.parquet", [13, 9, 14])
    else:
        write_tars(tmp_path / "d", [13, 9, 14])
        dataset = tmp_path / "d"
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, dataset, tmp_path / "out",
        data={"dataset": str(dataset), "streaming": True, "eval_split": None, "validation_fraction": 0.25,
              "shuffle_buffer": 5, "augment": {"crop_scale": [0.5, 1.0], "hflip": True}},
        training={"num_train_epochs": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "seed": 0,
                  "use_cpu": True, "disable_tqdm": True, "dataloader_num_workers": 2},
    )
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    pieces = report["splits"]
    assert pieces["train"]["images"] + pieces["validation"]["images"] == 36 and pieces["validation"]["images"] > 0
    assert any("approximately stratified" in note for note in report["notes"])
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["eval_num_images"] == pieces["validation"]["images"]
    assert "approximately stratified" in json.loads((tmp_path / "out" / "eval_report.json").read_text())["split"]


def test_shards_of_unknown_size_train_for_max_steps_and_count_the_eval_split(tmp_path: Path, tiny_vit: Path) -> None:
    from tests.helpers.streams import write_arrow_folder

    dataset = write_arrow_folder(tmp_path / "arrow", {"train": (24, 2), "test": (9, 1)})
    data = {"dataset": str(dataset), "streaming": True, "validation_fraction": 0.0}
    training = {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "seed": 0, "use_cpu": True,
                "disable_tqdm": True, "dataloader_num_workers": 2}
    refused = run_cli("--recipe", str(write_recipe(tmp_path / "r0.json", tiny_vit, dataset, tmp_path / "out0",
                                                   data=data, training=training)))
    assert refused.returncode == 2 and "set training.max_steps" in refused.stderr
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, dataset, tmp_path / "out", data=data,
                          training={**training, "max_steps": 9, "save_strategy": "steps", "save_steps": 5})
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "counting the images of 'test'" in result.stderr
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 9
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text())["eval_num_images"] == 9
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["splits"]["train"] == {"images": None, "bad": 0, "images_read": 9 * 4}


def test_shards_of_unknown_size_resume_after_kill_9_with_an_uninterrupted_runs_weights(tmp_path: Path, tiny_vit: Path) -> None:
    """Two shards of 12 in batches of 4, two lanes: 9 steps go round the shards twice; the
    checkpoint at step 3 is mid-round, with random crops, flips and a policy on."""
    from tests.helpers.streams import write_arrow_folder

    dataset = write_arrow_folder(tmp_path / "arrow", {"train": (24, 2), "test": (9, 1)})
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, dataset, tmp_path / "reference",
        data={"dataset": str(dataset), "streaming": True, "validation_fraction": 0.0, "shuffle_buffer": 5,
              "augment": {"crop_scale": [0.5, 1.0], "hflip": True, "preset": "trivial_augment"}},
        training={"max_steps": 9, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "seed": 0, "use_cpu": True,
                  "disable_tqdm": True, "dataloader_num_workers": 2, "save_strategy": "steps", "save_steps": 3,
                  "save_total_limit": 10},
    )
    reference = run_cli("--recipe", str(recipe))
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "killed"
    resumed = _killed_at_step_3_then_rerun(recipe, out)
    assert "the stream resumes at batch" in resumed.stderr
    ours, theirs = saved_weights(out), saved_weights(tmp_path / "reference")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "resumed weights differ from an uninterrupted run"


def test_shards_of_unknown_size_on_two_processes_train_equal_steps_and_score_each_eval_image_once(
    tmp_path: Path, tiny_vit: Path, monkeypatch
) -> None:
    from tests.helpers.streams import write_arrow_folder

    dataset = write_arrow_folder(tmp_path / "arrow", {"train": (30, 3), "test": (11, 2)})  # 3 shards for 2 processes
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, dataset, tmp_path / "out",
        data={"dataset": str(dataset), "streaming": True, "validation_fraction": 0.0},
        training={"max_steps": 6, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 5,
                  "seed": 0, "use_cpu": True, "disable_tqdm": True, "dataloader_num_workers": 1, "save_strategy": "no"},
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two ranks on two cores
    result = run_cli("--recipe", str(recipe), launcher=TORCHRUN + ["--master_port", "29613"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 6
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text())["eval_num_images"] == 11
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["splits"]["train"]["images_read"] == 6 * 4 * 2
