"""A checkpoint counts as whole in every format the Trainer writes under the shipped launch
configs (safetensors, ``.bin``, FSDP's sharded and full state dicts, DeepSpeed's ZeRO layout,
LoRA's adapters, the probe's head), and only a cut-off one is removed after a full disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from finetune.training.checkpoints import (
    checkpoint_problem,
    cut_off_checkpoints,
    last_complete_checkpoint,
)
from finetune.training.output_dir import _remove_cut_off_checkpoints


def _state(path: Path, step: int) -> None:
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def _trainer_files(path: Path, step: int) -> None:
    """What the Trainer writes around the weights under any launcher: scheduler, RNG, state."""
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    torch.save({"python": 0}, path / "rng_state_0.pth")
    _state(path, step)


def _layout(out: Path, step: int, kind: str) -> Path:
    """A checkpoint folder as each writer lays it out (file names from transformers' Trainer,
    accelerate's ``save_fsdp_model``/``save_fsdp_optimizer``, peft and DeepSpeed's
    ``save_checkpoint``)."""
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    weights = {"w": torch.arange(6.0)}
    if kind == "safetensors":  # save_pretrained; the probe's head (the Trainer's state dict of a plain module)
        save_file(weights, path / "model.safetensors")
        torch.save({"state": {}}, path / "optimizer.pt")
    elif kind == "sharded-safetensors":
        save_file(weights, path / "model-00001-of-00002.safetensors")
        save_file(weights, path / "model-00002-of-00002.safetensors")
        index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    elif kind == "lora":
        save_file(weights, path / "adapter_model.safetensors")
        (path / "adapter_config.json").write_text("{}")
        torch.save({"state": {}}, path / "optimizer.pt")
    elif kind == "lora-bin":
        torch.save(weights, path / "adapter_model.bin")
    elif kind == "fsdp-full":  # FULL_STATE_DICT without the Trainer's own model.safetensors
        torch.save(weights, path / "pytorch_model_fsdp.bin")
        torch.save({"state": {}}, path / "optimizer.bin")
    elif kind == "fsdp-sharded":  # SHARDED_STATE_DICT: torch.distributed.checkpoint folders, no weights file
        import torch.distributed.checkpoint as dcp

        dcp.save({"model": weights}, storage_writer=dcp.FileSystemWriter(str(path / "pytorch_model_fsdp_0")))
        dcp.save({"optimizer": {"step": torch.tensor(1.0)}}, storage_writer=dcp.FileSystemWriter(str(path / "optimizer_0")))
    elif kind == "deepspeed-zero3":  # stage3_gather_16bit_weights_on_model_save false: no weights file
        tag = path / f"global_step{step}"
        tag.mkdir()
        for rank in range(2):
            torch.save({"module": None}, tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
            torch.save({"optimizer_state_dict": {}}, tag / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        (path / "latest").write_text(f"global_step{step}")
        (path / "zero_to_fp32.py").write_text("# DeepSpeed's conversion script\n")
        (path / "config.json").write_text("{}")
    elif kind == "deepspeed-zero2":
        tag = path / f"global_step{step}"
        tag.mkdir()
        torch.save({"module": weights}, tag / "mp_rank_00_model_states.pt")
        torch.save({"optimizer_state_dict": {}}, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
        (path / "latest").write_text(f"global_step{step}")
    else:
        raise AssertionError(kind)
    _trainer_files(path, step)
    return path


KINDS = ["safetensors", "sharded-safetensors", "lora", "lora-bin", "fsdp-full", "fsdp-sharded",
         "deepspeed-zero3", "deepspeed-zero2"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # DCP saving in one process without a process group
@pytest.mark.parametrize("kind", KINDS)
def test_every_checkpoint_format_counts_as_complete(tmp_path: Path, kind: str) -> None:
    path = _layout(tmp_path, 4, kind)
    assert checkpoint_problem(path) is None
    assert last_complete_checkpoint(tmp_path) == str(path)


def _cut(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


#: For each format, a file that a save stopped part way leaves short.
CUT = {
    "safetensors": "model.safetensors",
    "sharded-safetensors": "model-00002-of-00002.safetensors",
    "lora": "adapter_model.safetensors",
    "lora-bin": "adapter_model.bin",
    "fsdp-full": "pytorch_model_fsdp.bin",
    "fsdp-sharded": "pytorch_model_fsdp_0/__0_0.distcp",
    "deepspeed-zero3": "global_step4/zero_pp_rank_1_mp_rank_00_model_states.pt",
    "deepspeed-zero2": "global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt",
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_a_file_cut_short_makes_any_format_incomplete(tmp_path: Path, kind: str) -> None:
    whole = _layout(tmp_path, 2, kind)
    path = _layout(tmp_path, 4, kind)
    _cut(path / CUT[kind])
    problem = checkpoint_problem(path)
    assert problem is not None and problem.cut_off and CUT[kind].split("/")[0] in problem.reason
    assert last_complete_checkpoint(tmp_path) == str(whole)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_missing_pieces_are_cut_off(tmp_path: Path) -> None:
    shard = _layout(tmp_path, 1, "sharded-safetensors")
    (shard / "model-00002-of-00002.safetensors").unlink()
    dcp = _layout(tmp_path, 2, "fsdp-sharded")
    (dcp / "pytorch_model_fsdp_0" / ".metadata").unlink()  # written last, by the coordinating process
    ds = _layout(tmp_path, 3, "deepspeed-zero3")
    (ds / "latest").write_text("global_step99")
    state = _layout(tmp_path, 5, "safetensors")
    (state / "trainer_state.json").write_text('{"global_st')
    for path in (shard, dcp, ds, state):
        problem = checkpoint_problem(path)
        assert problem is not None and problem.cut_off, path
    assert last_complete_checkpoint(tmp_path) is None


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_full_disk_cleanup_removes_only_cut_off_checkpoints(tmp_path: Path) -> None:
    """Whole checkpoints of every format stay, and so does a folder that looks whole in a format
    finetune does not know (it is skipped, not deleted); only the cut-off ones go."""
    for step, kind in enumerate(KINDS, start=1):
        _layout(tmp_path, step, kind)
    cut = _layout(tmp_path, 20, "fsdp-sharded")
    _cut(cut / "optimizer_0" / "__0_0.distcp")
    unknown = tmp_path / "checkpoint-21"
    unknown.mkdir()
    (unknown / "weights.npz").write_bytes(b"someone else's format")
    _state(unknown, 21)
    problem = checkpoint_problem(unknown)
    assert problem is not None and not problem.cut_off and "no model weights" in problem.reason
    assert cut_off_checkpoints(tmp_path) == [cut]
    _remove_cut_off_checkpoints(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f"checkpoint-{s}" for s in range(1, len(KINDS) + 1)] + ["checkpoint-21"])
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / f"checkpoint-{len(KINDS)}")
