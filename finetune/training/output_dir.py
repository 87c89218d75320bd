"""The output folder: whether a run may start, resume or must stop there, its lock, which checkpoints are whole, and a full disk."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune.recipe import Recipe
from finetune.utils.errors import UserError, first_line
from finetune.utils.files import follow_umask, write_json

logger = logging.getLogger("finetune")

#: The lock a run holds on its output folder, and who holds it (pid, host, start, command).
LOCK_NAME = ".finetune.lock"
HOLDER_NAME = ".finetune.lock.json"
_LOCK_FILES = {LOCK_NAME, HOLDER_NAME, HOLDER_NAME + ".tmp"}
#: What a run writes before training starts; a folder holding only these has nothing to lose.
#: LP-FT's probed head (:mod:`finetune.training.lp_ft`): kept between attempts of a recipe like
#: the checkpoints, and removed with them by --overwrite.
LP_HEAD = "lp_head.safetensors"
#: ``inspect/``: finetune inspect's report on the recipe's data, which may come before any run.
_BEFORE_TRAINING = {"recipe.json", "data_report.json", "recipe.json.tmp", "data_report.json.tmp", "inspect"} | _LOCK_FILES


class OutputDirError(UserError):
    """The output folder cannot be used: it is in use, not a folder, or holds something
    that this run must not overwrite."""


class DiskFullError(UserError):
    """A write failed because the file system (or the user's quota) is full."""


def recipe_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Where two recipe dicts differ, as ``key: old → new`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += recipe_differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [f"{prefix}: {json.dumps(a)} → {json.dumps(b)}"]


def comparable(recipe_dict: dict[str, Any]) -> dict[str, Any]:
    # Publishing settings do not change what is trained, and a run folder may be moved.
    return {k: v for k, v in recipe_dict.items() if k not in ("hub", "output_dir")}


def _with_new_defaults(old: Any, defaults: Any) -> Any:
    """``old`` (a recipe.json written by an earlier finetune) with each key it lacks taken from
    ``defaults``: a key added since then has the default that keeps the old behaviour, so a
    run started before an upgrade still resumes when the recipe did not change."""
    if not isinstance(old, dict) or not isinstance(defaults, dict):
        return old
    filled = {k: _with_new_defaults(v, defaults.get(k)) for k, v in old.items()}
    return {**{k: v for k, v in defaults.items() if k not in old}, **filled}


def check_output_dir(recipe: Recipe, overwrite: bool) -> str | None:
    """Decide what to do with the output folder; returns the checkpoint to resume from.

    - empty or missing: a fresh run;
    - holds a run of the same recipe: resume from its last complete checkpoint;
    - holds a different recipe or files that are not ours: stop, naming the differences,
      unless ``--overwrite`` (then old checkpoints are removed and a fresh run starts).

    Only looks: ``claim_output_dir`` removes the old checkpoints for ``--overwrite``, under the lock.
    """
    out = Path(recipe.output_dir)
    return last_complete_checkpoint(out) if _holds_this_recipe(out, recipe, overwrite) else None


def _holds_this_recipe(out: Path, recipe: Recipe, overwrite: bool) -> bool:
    """Whether ``out`` holds an earlier run of this recipe; raises when the run must stop."""
    check_output_path(out)
    if not out.exists():
        return False
    entries = [p for p in out.iterdir()]
    if {p.name for p in entries} <= _BEFORE_TRAINING:
        return False  # an earlier attempt stopped before training: nothing to keep
    previous = out / "recipe.json"
    if overwrite:
        return False
    if not previous.is_file():
        foreign = sorted(p.name for p in entries if p.name not in _LOCK_FILES)[:5]
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
    defaults = type(recipe)().to_dict()
    differences = recipe_differences(comparable(_with_new_defaults(old, defaults)), comparable(recipe.to_dict()))
    if differences:
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise OutputDirError(
            f"output_dir: '{out}' holds a run of a different recipe ({shown}); "
            "choose another output_dir (--set output_dir=...) or pass --overwrite to replace it"
        )
    return True


def check_output_path(out: Path) -> None:
    """``out`` is a folder or can be made one: neither it nor a folder above it is a file."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output_dir: '{out}' is a file; name a folder")
    for parent in out.parents:  # the nearest one that exists must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise OutputDirError(
                    f"output_dir: '{out}' cannot be made: '{parent}' is a file, not a folder; choose another output_dir"
                )
            return


# ------------------------------------------------------------------ one run at a time


class OutputLock:
    """The lock a run holds on its output folder for as long as it runs.

    ``filelock.FileLock`` locks with flock(2): the kernel releases it when the process ends,
    however it ends (kill -9 included), so a dead run never blocks the next one. The lock
    file stays in the folder (deleting it would let a run that opened it just before lock
    a file nobody else sees); the holder's details go into a small file next to it, which
    a run that finds the folder locked reads to name the one using it.
    """

    def __init__(self, out: Path) -> None:
        from filelock import FileLock

        self.out = out
        self._lock = FileLock(out / LOCK_NAME, timeout=0)

    def acquire(self) -> OutputLock:
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise OutputDirError(
                f"output_dir: '{self.out}' is in use by another finetune run ({self._holder()}); "
                "wait for it to finish or choose another output_dir (--set output_dir=...)"
            ) from None
        except OSError as err:
            raise OutputDirError(
                f"output_dir: cannot write in '{self.out}' ({err.strerror or first_line(err)}); choose another output_dir"
            ) from None
        # A killed run's details are stale: until write_holder, a run that finds the folder
        # locked says that its holder has just started rather than name a dead process.
        (self.out / HOLDER_NAME).unlink(missing_ok=True)
        return self

    def _holder(self) -> str:
        try:
            holder = json.loads((self.out / HOLDER_NAME).read_text())
            started = datetime.fromisoformat(holder["started"])
            when = started.strftime("%H:%M:%S" if started.date() == datetime.now().date() else "%Y-%m-%d %H:%M:%S")
            return f"pid {holder['pid']} on {holder['host']}, started {when}"
        except (OSError, ValueError, KeyError, TypeError):
            return f"it has just started; see {self.out / HOLDER_NAME}"

    def write_holder(self) -> None:
        write_json(
            self.out / HOLDER_NAME,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.now().isoformat(timespec="seconds"),
                "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            },
        )

    def release(self) -> None:
        if self._lock.is_locked:
            (self.out / HOLDER_NAME).unlink(missing_ok=True)
            self._lock.release()


def claim_output_dir(recipe: Recipe, overwrite: bool) -> tuple[OutputLock, str | None]:
    """Lock the output folder for this run (made if missing), then decide what to do with it
    (``check_output_dir``); returns the lock and the checkpoint to resume from. Run it on the
    main process only.

    A folder that the run must refuse is refused before anything is written into it; the
    decision that counts is taken again under the lock, so that two runs started together
    cannot both decide the folder is theirs.
    """
    out = Path(recipe.output_dir)
    if not (out / LOCK_NAME).exists():
        _holds_this_recipe(out, recipe, overwrite)  # a folder of someone else's stays untouched
    else:
        check_output_path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(
            f"output_dir: cannot make '{out}' ({err.strerror or first_line(err)}); choose another output_dir"
        ) from None
    lock = OutputLock(out).acquire()
    try:
        resume = check_output_dir(recipe, overwrite)
        if overwrite:
            for ckpt in out.glob("checkpoint-*"):
                shutil.rmtree(ckpt, ignore_errors=True)
            (out / LP_HEAD).unlink(missing_ok=True)
        lock.write_holder()
    except BaseException:
        lock.release()
        raise
    return lock, resume


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


def last_complete_checkpoint(out: Path, quiet: bool = False) -> str | None:
    """The newest checkpoint that is whole; ones cut off mid-write are skipped (and said,
    unless ``quiet``)."""
    for path in sorted(out.glob("checkpoint-*"), key=_checkpoint_step, reverse=True):
        if not path.is_dir() or _checkpoint_step(path) < 0:
            continue
        if checkpoint_is_complete(path):
            return str(path)
        if not quiet:
            logger.warning("skipping %s: it was cut off mid-write", path)
    return None


def what_a_rerun_does(out: Path, final_step: int | None = None) -> str:
    """How running the same command again continues, from the checkpoints in ``out`` now:
    "it resumes from …" or "it trains again from the start …"."""
    last = last_complete_checkpoint(out, quiet=True)
    if last is None:
        return "it trains again from the start (there is no checkpoint to resume from)"
    if final_step is not None and _checkpoint_step(Path(last)) >= final_step:
        return f"it resumes from {last}, where training ended, and only redoes what comes after training"
    return f"it resumes from {last}"


class FollowUmaskCallback(TrainerCallback):
    """Each checkpoint's weights get the mode any new file gets
    (``finetune.utils.files.follow_umask``: safetensors leaves them readable by their owner
    only)."""

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            follow_umask(Path(args.output_dir))


# ------------------------------------------------------------------ a full disk

#: How the errno of a full disk reads in the messages of libraries that drop the errno
#: (safetensors' SafetensorError: "… No space left on device (os error 28)").
_FULL_TEXTS = {os.strerror(errno.ENOSPC): errno.ENOSPC, os.strerror(errno.EDQUOT): errno.EDQUOT}


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _disk_full(err: BaseException, out: Path, needed: int) -> tuple[Path, int] | None:
    """(the folder whose file system is full, the errno) when ``err`` is a failed write to
    a full disk or quota; None otherwise."""
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return (_outside(Path(os.fsdecode(e.filename)), out) if e.filename else out), e.errno
        for text, code in _FULL_TEXTS.items():
            if text in str(e):
                return out, code
        # torch.save reports a failed write as a RuntimeError of its zip writer
        # ("[enforce fail at inline_container.cc] … unexpected pos …", "PytorchStreamWriter
        # failed writing file …") without the errno: a full disk is read off the free space.
        if isinstance(e, RuntimeError) and any(t in str(e) for t in ("inline_container", "PytorchStreamWriter")):
            if _free_bytes(out) < needed:
                return out, errno.ENOSPC
    return None


def _outside(path: Path, out: Path) -> Path:
    """The folder to name for a failed write to ``path``: ``out`` for its own files, else
    the file's folder (a cache elsewhere, say)."""
    return out if _within(path, out) else path.parent


def _within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _free_bytes(folder: Path) -> int:
    for path in (folder, *folder.parents):
        try:
            return shutil.disk_usage(path).free
        except OSError:
            continue
    return 0


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _remove_cut_off_checkpoints(out: Path) -> None:
    """Checkpoints newer than the last complete one are a failed save's leftovers: useless
    (a resumed run skips them) and in the way of the space the next attempt needs."""
    last = last_complete_checkpoint(out, quiet=True)
    newest = _checkpoint_step(Path(last)) if last else -1
    for path in out.glob("checkpoint-*"):
        if path.is_dir() and _checkpoint_step(path) > newest:
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def disk_full_is_a_user_error(
    out: Path, what: str = "", needed: int = 0, final_step: int | None = None, main_process: bool = True
) -> Iterator[None]:
    """Turn a write that failed on a full disk into a ``DiskFullError`` whose one line names
    the full folder, what the write needed (``needed`` bytes for ``what``; 0: unknown), the
    free space, and what running the same command again does once there is space.
    ``main_process``: this process removes what the failed save left half-written."""
    try:
        yield
    except DiskFullError:
        raise  # an inner one already said what and where
    except Exception as err:
        full = _disk_full(err, out, needed)
        if full is None:
            raise
        folder, code = full
        if main_process:
            _remove_cut_off_checkpoints(out)
        needs = f"{what} needs about {_size(needed)}" if needed else ""
        if code == errno.EDQUOT:  # the file system's free space says nothing about the quota
            problem = f"your disk quota is used up where '{folder}' is" + (f" ({needs})" if needs else "")
        else:
            free = f"{_size(_free_bytes(folder))} free"
            problem = f"the disk is full where '{folder}' is ({needs + ', ' if needs else ''}{free})"
        raise DiskFullError(
            f"{'output_dir' if _within(folder, out) else 'disk'}: {problem}; free some space and run the same command again: "
            f"{what_a_rerun_does(out, final_step)}"
        ) from None
