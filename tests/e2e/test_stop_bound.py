"""Two processes (torchrun, gloo on CPU) with artificially slow steps: a SIGTERM on one of them
stops both within the bound in seconds (interrupts.AGREE_SECONDS, made 3 s here, with 1 s
steps), not at the next tenth step, at the same step, with a complete checkpoint of it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from finetune.training.checkpoints import checkpoint_problem
from tests.helpers import ROOT
from tests.helpers.cli import write_recipe
from tests.helpers.images import make_image_folder

BOUND = 3.0
STEP = 1.0

RANK = """
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import finetune.training.interrupts as interrupts
interrupts.AGREE_SECONDS = float(sys.argv[3])
from finetune.training.trainer import FinetuneTrainer

step_seconds, signal_after = float(sys.argv[4]), int(sys.argv[5])
rank = int(os.environ["RANK"])
record = {"rank": rank}
real_step = FinetuneTrainer.training_step


def slow_step(self, *args, **kwargs):
    time.sleep(step_seconds)  # a large model's step
    if rank == 1 and self.state.global_step == signal_after and "signal" not in record:
        record["signal"] = time.monotonic()  # one clock for every process of the machine
        os.kill(os.getpid(), signal.SIGTERM)  # this process only: the other learns it by agreement
    return real_step(self, *args, **kwargs)


FinetuneTrainer.training_step = slow_step
from finetune.cli.common import setup_logging
from finetune.recipe import load_recipe
from finetune.training.interrupts import Interrupted
from finetune.training.train import train

setup_logging()
try:
    train(load_recipe(sys.argv[2]))
    record["finished"] = True
except Interrupted as err:
    record.update(stopped=time.monotonic(), message=str(err), code=err.exit_code)
with open(os.path.join(os.path.dirname(sys.argv[2]), f"rank{rank}.json"), "w") as f:
    json.dump(record, f)
"""


def test_a_sigterm_on_one_process_stops_both_within_the_bound_at_the_same_step(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=48, splits=("",))
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "recipe.json", tiny_vit, images, out,
        data={"dataset": str(images), "eval_split": None, "validation_fraction": 0.1},
        training={"num_train_epochs": 1, "per_device_train_batch_size": 4, "use_cpu": True, "disable_tqdm": True,
                  "eval_strategy": "no", "logging_steps": 1000, "seed": 0},
    )
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
               str(script), str(ROOT), str(recipe), str(BOUND), str(STEP), "2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert not any(r.get("finished") for r in ranks), "training ended before the signal was agreed on"
    steps = {int(re.search(r"at step (\d+) of", r["message"]).group(1)) for r in ranks}
    assert len(steps) == 1 and all(r["code"] == 143 for r in ranks), ranks  # one step, on every process
    (step,) = steps
    # Agreements come BOUND seconds of steps apart (at least a step), so the stop is at the
    # end of a step within BOUND + a step of the signal, plus the checkpoint; at every
    # tenth step, as before, it would have been 8 steps (8 s) after it.
    took = max(r["stopped"] for r in ranks) - ranks[1]["signal"]
    assert took < BOUND + 2 * STEP + 2.0, f"{took:.1f} s from the signal to the stop, at step {step}"
    assert step < 10
    checkpoint = out / f"checkpoint-{step}"
    assert checkpoint_problem(checkpoint) is None and sorted(out.glob("checkpoint-*")) == [checkpoint]
