"""FSDP2's checkpoints, written for real by accelerate's own saving code on two CPU processes
(gloo) under torchrun, count as whole; cut short, they do not.

accelerate runs FSDP on GPUs only (its state keeps a ``MULTI_CPU`` launch as DDP, so
``recipes/accelerate/fsdp.yaml`` with ``use_cpu`` trains with DDP checkpoints): the model is
sharded here with torch's own ``fully_shard`` and saved through
``accelerate.utils.fsdp_utils.save_fsdp_model``/``save_fsdp_optimizer``, the calls the
Trainer makes for an FSDP checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.training.checkpoints import checkpoint_problem, last_complete_checkpoint
from finetune.training.output_dir import what_a_rerun_does

SAVE = """
import json, os, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from accelerate import PartialState
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import save_fsdp_model, save_fsdp_optimizer

dist.init_process_group("gloo")
state = PartialState(cpu=True)
out, kind, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
for layer in model:
    if isinstance(layer, torch.nn.Linear):
        fully_shard(layer)
fully_shard(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
model(torch.randn(4, 8)).sum().backward()
optimizer.step()
plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type=kind)
checkpoint = os.path.join(out, f"checkpoint-{step}")
save_fsdp_model(plugin, state, model, checkpoint)
save_fsdp_optimizer(plugin, state, optimizer, model, checkpoint)
torch.save({"rng": torch.get_rng_state()}, os.path.join(checkpoint, f"rng_state_{state.process_index}.pth"))
dist.barrier()
if state.is_main_process:  # the Trainer's last file
    with open(os.path.join(checkpoint, "trainer_state.json"), "w") as f:
        json.dump({"global_step": step}, f)
dist.destroy_process_group()
"""


def _save(tmp_path: Path, out: Path, kind: str, step: int, port: int) -> Path:
    script = tmp_path / "save.py"
    script.write_text(SAVE)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(script), str(out), kind, str(step)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / f"checkpoint-{step}"


@pytest.mark.parametrize("kind, port", [("SHARDED_STATE_DICT", 29541), ("FULL_STATE_DICT", 29542)])
def test_fsdp_checkpoints_of_two_processes_are_complete_and_resumed_from(tmp_path: Path, kind: str, port: int) -> None:
    out = tmp_path / "run"
    first = _save(tmp_path, out, kind, 3, port)
    path = _save(tmp_path, out, kind, 6, port)
    names = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
    if kind == "SHARDED_STATE_DICT":  # one data file per process, and not one *.safetensors
        assert {"pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp"} <= names
        assert not any(n.endswith(".safetensors") for n in names)
    else:
        assert {"pytorch_model_fsdp.bin", "optimizer.bin"} <= names
    assert checkpoint_problem(path) is None
    assert what_a_rerun_does(out) == f"it resumes from {path}"
    # A process's shard cut short: the older checkpoint is the one to resume from.
    shard = next(path.rglob("__1_0.distcp")) if kind == "SHARDED_STATE_DICT" else path / "pytorch_model_fsdp.bin"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert checkpoint_problem(path).cut_off
    assert last_complete_checkpoint(out) == str(first)
    assert json.loads((first / "trainer_state.json").read_text())["global_step"] == 3
