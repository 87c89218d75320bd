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

from finetune.recipe import Recipe
from finetune.training import run_files
from finetune.training.checkpoints import (
    checkpoint_step,
    cut_off_checkpoints,
    last_complete_checkpoint,
)
from finetune.training.run_files import HOLDER_NAME, LOCK_NAME
from finetune.utils.errors import UserError, first_line
from finetune.utils.files import write_json

logger = logging.getLogger("finetune")

#: LP-FT's probed head (:mod:`finetune.training.lp_ft`): kept between attempts of a recipe like
#: the checkpoints, and removed with them by --overwrite.
LP_HEAD = "lp_head.safetensors"
#: What a run writes before training starts, and ``inspect/`` (finetune inspect's report on the
#: recipe's data, which may come before any run); a folder holding only these has nothing to lose.
_BEFORE_TRAINING = {"recipe.json", "data_report.json", run_files.INSPECT_FOLDER}


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
    """Whether ``out`` holds an earlier run of this recipe; raises when the run must stop.

    What is the run's and what is not comes from its manifest
    (:mod:`finetune.training.run_files`): a file finetune did not make stops the run whenever
    the run would remove it or write over it, and the message never suggests --overwrite
    while such files are there."""
    check_output_path(out)
    if not out.exists():
        return False
    found = run_files.survey(out)
    if _before_training(found) and not (overwrite and found.foreign):
        return False  # an earlier attempt stopped before training, or only inspect ran: nothing to keep
    previous = out / "recipe.json"
    is_run = found.manifest or previous.is_file()
    if found.foreign and (overwrite or not is_run):
        beside = " beside a finetune run" if is_run else ""
        raise OutputDirError(
            f"output_dir: '{out}' holds files that finetune did not make ({found.describe(found.foreign)}){beside}, "
            "and finetune never deletes or writes over those; choose another output_dir (--set output_dir=...), "
            "or move them out of the folder"
        )
    if overwrite:
        return False
    if not previous.is_file():
        raise OutputDirError(
            f"output_dir: '{out}' holds a finetune run without its recipe.json; choose another output_dir "
            "(--set output_dir=...) or pass --overwrite to replace the run"
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
        fix = (
            f"move the files finetune did not make ({found.describe(found.foreign)}) out of the folder and pass "
            "--overwrite to replace the run, or choose another output_dir (--set output_dir=...)"
            if found.foreign
            else "choose another output_dir (--set output_dir=...) or pass --overwrite to replace it "
            "(it removes that run's files, and nothing else)"
        )
        raise OutputDirError(f"output_dir: '{out}' holds a run of a different recipe ({shown}); {fix}")
    if clash := run_files.collisions(found):
        raise OutputDirError(
            f"output_dir: '{out}' holds {found.describe(clash)} where the run writes, and finetune did not make "
            "them (or they are links, which it never makes); move them out of the folder, then run the same "
            "command again"
        )
    return True


def _before_training(found: run_files.Survey) -> bool:
    """Whether the folder holds only what comes before training: the files a run writes then,
    inspect's report (which a fresh run keeps), and the user's files put into that report's folder."""
    own = {p.partition("/")[0] for p in found.own if not run_files.is_scratch(p)}
    return own <= _BEFORE_TRAINING and all(p.startswith(run_files.INSPECT_FOLDER + "/") for p in found.foreign)


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
                f"output_dir: '{self.out}' is in use by another finetune run ({self.holder()}); "
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

    def holder(self) -> str:
        """Who holds the lock: pid, host and start time, as the holder wrote them."""
        try:
            holder = json.loads((self.out / HOLDER_NAME).read_text())
            started = datetime.fromisoformat(holder["started"])
            when = started.strftime("%H:%M:%S" if started.date() == datetime.now().date() else "%Y-%m-%d %H:%M:%S")
            if holder["host"] == socket.gethostname() and not _alive(int(holder["pid"])):
                raise ValueError("the details of a run that was killed")
            return f"pid {holder['pid']} on {holder['host']}, started {when}"
        except (OSError, ValueError, KeyError, TypeError):
            # Readers (finetune push, export, eval) share the lock and write no details.
            return f"one that has just started, or a finetune push, export or eval reading it; see {self.out / HOLDER_NAME}"

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


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists (signal 0 only asks)."""
    if os.name != "posix":  # there, os.kill's 0 is CTRL_C_EVENT: a real signal
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        return True
    return True


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
        found = run_files.survey(out)
        if overwrite:
            # Exactly the old run's files (checkpoints, model, reports, its eval-*/ and onnx/),
            # so nothing of it (all_results.json's keys, say) mixes into the new run.
            run_files.start_afresh(out, keep=run_files.remove(out, found.own))
        elif not found.manifest and found.own:
            run_files.record(out, *found.own)  # an earlier version's run: its known names, from now on listed
        lock.write_holder()
    except BaseException:
        lock.release()
        raise
    return lock, resume


def what_a_rerun_does(out: Path, final_step: int | None = None) -> str:
    """How running the same command again continues, from the checkpoints in ``out`` now:
    "it resumes from …" or "it trains again from the start …"."""
    last = last_complete_checkpoint(out, quiet=True)
    if last is None:
        return "it trains again from the start (there is no checkpoint to resume from)"
    if final_step is not None and checkpoint_step(Path(last)) >= final_step:
        return f"it resumes from {last}, where training ended, and only redoes what comes after training"
    return f"it resumes from {last}"


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
    """Checkpoints that a failed save left part-written are useless (a resumed run skips
    them) and in the way of the space the next attempt needs."""
    for path in cut_off_checkpoints(out):
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
