"""Two CPU processes give the single-process answer, and a launcher changes nothing.

Runs the real command line under `accelerate launch --config_file
recipes/accelerate/cpu_2proc.yaml` (two gloo ranks) and under `torchrun`, and compares
with one process at the same global batch; and one process under `accelerate launch`
against plain `python` at the same thread count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.images import make_image_folder

CONFIGS = ROOT / "recipes" / "accelerate"
TWO_PROC = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml")]


def _torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]


@pytest.fixture(autouse=True)
def one_thread_per_rank(monkeypatch):
    # Two ranks on two cores: one intra-op thread each, or they fight over the cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _probe_recipe(path: Path, model: Path, images: Path, out: Path, batch: int, mode: str) -> Path:
    head = {"probe_solver": "lbfgs", "probe_l2": [0.01]} if mode == "lbfgs" else {}
    return write_recipe(
        path, model, images, out,
        data={"dataset": str(images), "validation_fraction": 0.0, "augment": {"crop_scale": None, "hflip": False}},
        model={"name_or_path": str(model), "strategy": "linear_probe", "feature_cache": mode != "per-step", **head},
        training={"num_train_epochs": 2, "learning_rate": 0.05, "optim": "sgd", "optim_args": "momentum=0.9",
                  "per_device_train_batch_size": batch, "per_device_eval_batch_size": 5, "seed": 0,
                  "eval_strategy": "no", "disable_tqdm": True},
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


@pytest.fixture(scope="module", params=["per-step", "feature-cache", "lbfgs"])
def probe_runs(request, tmp_path_factory, tiny_resnet) -> dict[str, Path]:
    """The same linear probe with one process (batch 8) and two (4 each): same global batch.
    Every path: the backbone every step, the features cached once (sharded over ranks), and
    the L-BFGS head on those features (fitted on every rank, broadcast from rank 0)."""
    root = tmp_path_factory.mktemp("ddp")
    images = make_image_folder(root / "images", per_class=16)  # 48 train = 6 full global batches
    one = _probe_recipe(root / "one.json", tiny_resnet, images, root / "one", batch=8, mode=request.param)
    two = _probe_recipe(root / "two.json", tiny_resnet, images, root / "two", batch=4, mode=request.param)
    runs = {"one": run_cli("--recipe", str(one)), "two": run_cli("--recipe", str(two), launcher=TWO_PROC)}
    for name, result in runs.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    assert "2 process(es)" in runs["two"].stderr and "1 process(es)" in runs["one"].stderr
    return {"root": root, "one": root / "one", "two": root / "two", "stderr_two": runs["two"].stderr, "mode": request.param}


@pytest.mark.e2e
def test_two_processes_give_the_single_process_answer(probe_runs) -> None:
    one = json.loads((probe_runs["one"] / "eval_results.json").read_text())
    two = json.loads((probe_runs["two"] / "eval_results.json").read_text())
    assert one["eval_num_images"] == two["eval_num_images"] == 24  # every test image exactly once
    assert one["eval_accuracy"] == two["eval_accuracy"] and one["eval_f1"] == two["eval_f1"]
    a, b = _weights(probe_runs["one"]), _weights(probe_runs["two"])
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


@pytest.mark.e2e
def test_only_the_main_process_writes(probe_runs) -> None:
    root = probe_runs["root"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["images", "one", "two"]
    assert len(list(root.rglob("README.md"))) == 2  # one card per run
    report = json.loads((probe_runs["two"] / "eval_report.json").read_text())
    assert sum(row["support"] for row in report["per_class"].values()) == 24
    # Each line that rank 0 alone logs appears once.
    if probe_runs["mode"] == "lbfgs":
        assert probe_runs["stderr_two"].count("finetune: L-BFGS head: λ = 0.01") == 1
    else:
        assert probe_runs["stderr_two"].count("finetune: training: effective batch 8 = 4 per device × 2 process(es)") == 1


@pytest.mark.e2e
def test_ddp_does_not_search_for_unused_parameters(probe_runs) -> None:
    """Every tensor the probe trains gets a gradient, so DDP runs with find_unused_parameters
    off: no extra autograd traversal per step, and no warning from torch about one."""
    assert "find_unused_parameters=True was specified" not in probe_runs["stderr_two"]
    assert "get no gradient" not in probe_runs["stderr_two"]


@pytest.mark.e2e
def test_validation_piece_is_the_same_on_every_rank(tmp_path: Path) -> None:
    """The automatic split (eval_split null, k-shot) is computed on each rank: same ids."""
    script = tmp_path / "split.py"
    script.write_text(
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from finetune import data\n"
        "from finetune.data import digits\n"
        "from finetune.recipe import DataConfig\n"
        "raw = digits.load_dataset('builtin:digits')\n"
        "raw['train'] = raw['train'].add_column('row', list(range(len(raw['train']))))\n"
        "s = data.make_splits(raw, DataConfig(dataset='builtin:digits', eval_split=None, validation_fraction=0.2,\n"
        "                                     samples_per_class=20), seed=42)\n"
        "rank = os.environ['RANK']\n"
        f"json.dump({{'train': s.train['row'][:], 'validation': s.validation['row'][:]}},\n"
        f"          open(os.path.join({str(tmp_path)!r}, f'rank{{rank}}.json'), 'w'))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(_torchrun(29531) + [str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == rank1
    assert len(rank0["train"]) == 200 and len(rank0["validation"]) == 40
    assert not set(rank0["train"]) & set(rank0["validation"])


@pytest.mark.e2e
def test_eval_split_null_under_torchrun(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=10, splits=("",))
    recipe = write_recipe(
        tmp_path / "r.json", tiny_vit, images, tmp_path / "out",
        data={"dataset": str(images), "eval_split": None, "validation_fraction": 0.3},
        training={"num_train_epochs": 1, "per_device_train_batch_size": 4, "disable_tqdm": True, "seed": 0},
    )
    two = run_cli("--recipe", str(recipe), launcher=_torchrun(29533))
    assert two.returncode == 0, two.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["eval_num_images"] == 9  # the validation piece, each image once
    assert "2 process(es)" in two.stderr


@pytest.mark.e2e
def test_accelerate_launch_and_plain_python_train_the_same_weights(tmp_path: Path, tiny_vit: Path) -> None:
    """At the same thread count (one, set by the fixture above for both) `accelerate launch`
    and `python finetune/run.py` give bitwise the same weights: the launcher changes no seed.
    What differs between the two by default is the thread count (accelerate launch sets
    OMP_NUM_THREADS=1 on a machine without GPU), and a different count sums floats in a
    different order: the weights then differ in the last bits (measured: up to 7e-5 after one
    epoch of this tiny ViT on 48 images)."""
    images = make_image_folder(tmp_path / "images", per_class=8)
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, tmp_path / "out", training__num_train_epochs=1)
    runs = {
        "plain": run_cli("--recipe", str(recipe), "--set", f"output_dir={tmp_path / 'plain'}"),
        "launched": run_cli(
            "--recipe", str(recipe), "--set", f"output_dir={tmp_path / 'launched'}",
            launcher=[sys.executable, "-m", "accelerate.commands.launch"],
        ),
    }
    for name, result in runs.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    plain = (tmp_path / "plain" / "model.safetensors").read_bytes()
    assert plain != (tiny_vit / "model.safetensors").read_bytes()  # it trained
    assert plain == (tmp_path / "launched" / "model.safetensors").read_bytes()


@pytest.mark.e2e
@pytest.mark.parametrize("data_keys", [{"sampler": "balanced"}, {"class_weights": "balanced"}], ids=["sampler", "weights"])
def test_class_imbalance_keys_give_the_single_process_answer(tmp_path: Path, tiny_resnet: Path, data_keys: dict) -> None:
    """The balanced sampler draws one order that the processes share out (seeded by epoch, not
    by rank), and the weighted loss stays a mean over images, so two processes at half the
    batch train what one does; the EMA of the weights, which the saved model is, too."""
    images = make_image_folder(tmp_path / "images", per_class=16)
    # 16 / 16 / 8: imbalanced, and 40 images: 5 full global batches (no batch wraps round on 2 processes).
    for extra in sorted((images / "train" / "blue").glob("*.png"))[8:]:
        extra.unlink()
    runs = {}
    for name, batch, launcher in (("one", 8, None), ("two", 4, TWO_PROC)):
        recipe = write_recipe(
            tmp_path / f"{name}.json", tiny_resnet, images, tmp_path / name,
            data={"dataset": str(images), "validation_fraction": 0.0, "augment": {"crop_scale": None, "hflip": False},
                  **data_keys},
            model={"name_or_path": str(tiny_resnet), "strategy": "linear_probe", "feature_cache": False},
            training={"num_train_epochs": 2, "learning_rate": 0.05, "optim": "sgd", "per_device_train_batch_size": batch,
                      "per_device_eval_batch_size": 5, "seed": 0, "eval_strategy": "no", "disable_tqdm": True,
                      "ema_decay": 0.5},
        )
        runs[name] = run_cli("--recipe", str(recipe), launcher=launcher)
        assert runs[name].returncode == 0, f"{name}: {runs[name].stderr[-3000:]}"
    assert "class-balanced sampling" in runs["two"].stderr or "balanced class weights" in runs["two"].stderr
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
