"""Which checkpoints in an output folder are whole, in every format the Trainer writes under the shipped launch configs."""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("finetune")

#: The folder names of FSDP's sharded state dict (``torch.distributed.checkpoint``): the
#: model's, one per model (``pytorch_model_fsdp_0``), and the optimizer's (``optimizer_0``).
_DCP_MODEL_PREFIX = "pytorch_model_fsdp_"
#: Files that hold a model's weights, by the name each writer gives them: transformers'
#: ``save_pretrained`` (one file or shards), peft's adapters, the Trainer's state dict of a
#: model that is not a ``PreTrainedModel`` (the probe's head), FSDP's full state dict.
_WEIGHTS_PREFIXES = ("model", "adapter_model", "pytorch_model")
#: Files ``torch.save`` writes (a zip archive since torch 1.6): weights in ``.bin``, the
#: optimizer, scheduler and RNG states, the training arguments, DeepSpeed's states.
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass(frozen=True)
class Problem:
    """Why a checkpoint folder cannot be resumed from. ``cut_off``: a save stopped part way
    (nothing in it is of use, and a full disk's cleanup may remove it); otherwise the folder
    looks whole but holds no weights in a format finetune knows, and is left alone."""

    reason: str
    cut_off: bool = True


def checkpoint_step(path: Path) -> int:
    """The step in a ``checkpoint-N`` folder's name; -1 for any other name."""
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _safetensors_complete(path: Path) -> bool:
    """The header parses and the file is as long as the header says (not cut off)."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + size + end
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _zip_complete(path: Path) -> bool:
    """A ``torch.save`` file is a zip archive whose directory is written last: one cut off
    has none, and ``ZipFile`` cannot open it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _index_complete(path: Path) -> bool:
    """A sharded save's index (``model.safetensors.index.json``): it parses, and every shard
    it names is there (each shard is checked as a file of its own)."""
    try:
        shards = set(json.loads(path.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all((path.parent / shard).is_file() for shard in shards)


def _dcp_complete(folder: Path) -> bool:
    """A ``torch.distributed.checkpoint`` folder: its ``.metadata`` (written by the
    coordinating process once every process has written its data) reads, and each data
    file it names is as long as the tensors placed in it."""
    from finetune.utils import compat

    try:
        extents = compat.dcp_extents(str(folder))
    except Exception:  # noqa: BLE001 - any failure to read the metadata: the save did not finish
        return False
    for name, end in extents.items():
        try:
            if (folder / name).stat().st_size < end:
                return False
        except OSError:
            return False
    return bool(extents)


def _deepspeed_tag(path: Path) -> Path | None:
    """DeepSpeed's folder of model and optimizer states in a checkpoint: the one its
    ``latest`` file names (written by rank 0 once every rank has saved)."""
    try:
        tag = (path / "latest").read_text().strip()
    except OSError:
        return None
    folder = path / tag
    return folder if tag and "/" not in tag and folder.is_dir() else None


def checkpoint_problem(path: Path) -> Problem | None:
    """None when ``path`` is a whole checkpoint, else why not.

    The Trainer writes the weights, optimizer, scheduler and RNG states, then
    ``trainer_state.json`` last: that file must parse and name this step. Each file then
    must be whole, by its format: safetensors (header and length), ``torch.save`` archives
    (``.bin``/``.pt``/``.pth``: the zip directory), sharded-save indexes (every shard there),
    ``torch.distributed.checkpoint`` folders (FSDP's sharded state dict and optimizer: the
    metadata and the data files' lengths), DeepSpeed's tag folder (named by ``latest``).
    And the folder must hold the model in one of the forms these writers give it:
    ``model*.safetensors`` (``save_pretrained``, FSDP's full state dict, the probe's head,
    ZeRO-3 with a 16-bit gather), ``adapter_model.*`` (LoRA), ``pytorch_model*.bin``
    (FSDP's full state dict, ``.bin`` saves), a ``pytorch_model_fsdp_N`` folder (FSDP's
    sharded state dict), or DeepSpeed's ``*model_states.pt`` (ZeRO without the gather).
    """
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return Problem("it was cut off mid-write (no trainer_state.json)")
    if not isinstance(state, dict) or state.get("global_step") != checkpoint_step(path):
        return Problem("it was cut off mid-write (its trainer_state.json names another step)")
    holds_model = False
    deepspeed = _deepspeed_tag(path)
    if (path / "latest").exists() and deepspeed is None:
        return Problem("it was cut off mid-write (DeepSpeed's 'latest' names no folder)")
    for file in sorted(path.rglob("*")):
        name = file.name
        if file.is_dir():
            if (file / ".metadata").exists() or any(file.glob("*.distcp")):
                if not _dcp_complete(file):
                    return Problem(f"it was cut off mid-write ({file.relative_to(path)} is incomplete)")
                holds_model |= name.startswith(_DCP_MODEL_PREFIX)
            continue
        if name.endswith(".safetensors"):
            whole = _safetensors_complete(file)
        elif name.endswith(".index.json"):
            whole = _index_complete(file)
        elif name.endswith(_TORCH_SUFFIXES):
            whole = _zip_complete(file)
        else:
            continue
        if not whole:
            return Problem(f"it was cut off mid-write ({file.relative_to(path)} is incomplete)")
        if file.parent == path and name.startswith(_WEIGHTS_PREFIXES) and not name.endswith(".index.json") or deepspeed is not None and file.parent == deepspeed and name.endswith("model_states.pt"):
            holds_model = True
    if not holds_model:
        return Problem("it holds no model weights in a format finetune knows", cut_off=False)
    return None


def checkpoint_is_complete(path: Path) -> bool:
    """Whether ``path`` is a whole checkpoint to resume from (:func:`checkpoint_problem`)."""
    return checkpoint_problem(path) is None


def checkpoints(out: Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``out``, newest first."""
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) >= 0]
    return sorted(found, key=checkpoint_step, reverse=True)


def last_complete_checkpoint(out: Path, quiet: bool = False) -> str | None:
    """The newest checkpoint that is whole; the ones skipped are said (unless ``quiet``)."""
    for path in checkpoints(out):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        if not quiet:
            logger.warning("skipping %s: %s", path, problem.reason)
    return None


def cut_off_checkpoints(out: Path) -> list[Path]:
    """The checkpoints newer than the last whole one that a save left part-written: a
    full disk's leftovers, of no use to a resumed run. A folder that looks whole but in a
    format finetune does not know is not among them."""
    last = last_complete_checkpoint(out, quiet=True)
    newest = checkpoint_step(Path(last)) if last else -1
    out_of_date = [p for p in checkpoints(out) if checkpoint_step(p) > newest]
    return [p for p in out_of_date if (problem := checkpoint_problem(p)) is not None and problem.cut_off]
