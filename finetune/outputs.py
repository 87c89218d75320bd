"""The output folder: whether a run may start, resume or must stop there, and which checkpoints are whole."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .recipe import Recipe
from .util import follow_umask

logger = logging.getLogger("finetune")

#: What a run writes before training starts; a folder holding only these has nothing to lose.
_BEFORE_TRAINING = {"recipe.json", "data_report.json", "recipe.json.tmp", "data_report.json.tmp"}


class OutputDirError(RuntimeError):
    """The output folder holds something that this run must not overwrite."""


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Where two recipe dicts differ, as ``key: old → new`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [f"{prefix}: {json.dumps(a)} → {json.dumps(b)}"]


def _comparable(recipe_dict: dict[str, Any]) -> dict[str, Any]:
    # Publishing settings do not change what is trained, and a run folder may be moved.
    return {k: v for k, v in recipe_dict.items() if k not in ("hub", "output_dir")}


def check_output_dir(recipe: Recipe, overwrite: bool) -> str | None:
    """Decide what to do with the output folder; returns the checkpoint to resume from.

    - empty or missing: a fresh run;
    - holds a run of the same recipe: resume from its last complete checkpoint;
    - holds a different recipe or files that are not ours: stop, naming the differences,
      unless ``--overwrite`` (then old checkpoints are removed and a fresh run starts).
    """
    out = Path(recipe.output_dir)
    if not out.exists():
        return None
    if not out.is_dir():
        raise OutputDirError(f"output_dir: '{out}' is a file; name a folder")
    entries = [p for p in out.iterdir()]
    if {p.name for p in entries} <= _BEFORE_TRAINING:
        return None  # an earlier attempt stopped before training: nothing to keep
    previous = out / "recipe.json"
    if overwrite:
        for ckpt in out.glob("checkpoint-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
        return None
    if not previous.is_file():
        foreign = sorted(p.name for p in entries)[:5]
        raise OutputDirError(
            f"output_dir: '{out}' already holds files that are not a finetune run ({', '.join(foreign)}); "
            "choose another output_dir (--set output_dir=...) or pass --overwrite"
        )
    try:
        old = json.loads(previous.read_text())
    except (OSError, json.JSONDecodeError):
        raise OutputDirError(
            f"output_dir: '{previous}' is unreadable; choose another output_dir or pass --overwrite"
        ) from None
    differences = _diff(_comparable(old), _comparable(recipe.to_dict()))
    if differences:
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise OutputDirError(
            f"output_dir: '{out}' holds a run of a different recipe ({shown}); "
            "choose another output_dir (--set output_dir=...) or pass --overwrite to replace it"
        )
    return last_complete_checkpoint(out)


def _checkpoint_step(path: Path) -> int:
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


def checkpoint_is_complete(path: Path) -> bool:
    """The Trainer writes weights, optimizer, RNG state, then ``trainer_state.json``: a
    checkpoint is complete when that last file parses and names this step, and every
    weights file is whole."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    weights = list(path.glob("*.safetensors"))
    return (
        state.get("global_step") == _checkpoint_step(path)
        and bool(weights)
        and all(_safetensors_complete(w) for w in weights)
    )


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest checkpoint that is whole; ones cut off mid-write are skipped (and said)."""
    for path in sorted(out.glob("checkpoint-*"), key=_checkpoint_step, reverse=True):
        if not path.is_dir() or _checkpoint_step(path) < 0:
            continue
        if checkpoint_is_complete(path):
            return str(path)
        logger.warning("skipping %s: it was cut off mid-write", path)
    return None


class FollowUmaskCallback(TrainerCallback):
    """Each checkpoint's weights get the mode any new file gets (util.follow_umask:
    safetensors leaves them readable by their owner only)."""

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            follow_umask(Path(args.output_dir))
