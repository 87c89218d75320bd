"""The shared lock that `finetune push`, `export` and `eval` hold on a run's folder while they read it, so that no run rewrites it meanwhile."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from finetune.training.output_dir import OutputDirError, OutputLock
from finetune.training.run_files import LOCK_NAME

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def run_folder(folder: Path) -> Path | None:
    """The run whose lock covers ``folder``: the folder itself when it is a run's, its parent
    when it is an export inside a run (``OUTPUT_DIR/onnx``), else None."""
    for candidate in (folder, folder.parent):
        if (candidate / LOCK_NAME).exists() or (candidate / "recipe.json").is_file():
            return candidate
    return None


@contextmanager
def reading(folder: str | Path, error: type[Exception] = OutputDirError, key: str = "OUTPUT_DIR") -> Iterator[None]:
    """Hold the run's lock shared while the block reads ``folder`` (and writes its own reports
    into it); raise ``error`` in one line, naming the run, when a run holds it.

    Shared rather than refused or exclusive: readers never change the run's files, so two of
    them (an eval of two data sets, a push during an export) go together, while a run, which
    takes the lock exclusively (:class:`finetune.training.output_dir.OutputLock`), can start
    neither during a reader nor under one: a push cannot send new weights with an old card.
    The same flock(2) that ``filelock`` takes for the run, so the kernel drops it when the
    process ends, however it ends. Windows has no shared flock: there a reader takes the
    run's exclusive lock, and readers of one folder take turns.
    """
    run = run_folder(Path(folder))
    if run is None:  # not a run's folder (a copied export, say): no run can be writing it
        yield
        return
    if fcntl is None:
        lock = OutputLock(run)
        try:
            lock.acquire()
        except OutputDirError as err:
            raise error(f"{key}: {str(err).removeprefix('output_dir: ')}") from None
        try:
            yield
        finally:
            lock.release()
        return
    path = run / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | _FLAGS)
    except FileNotFoundError:
        # No run of this version has been in the folder (a run leaves the lock file behind):
        # the readers only read, and make no file of their own.
        yield
        return
    except OSError as err:  # a link planted at the lock's name (ELOOP), a permission
        raise error(f"{key}: cannot open the lock of '{run}' ({err.strerror}); check {path}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(
                f"{key}: '{run}' is in use by a finetune run ({OutputLock(run).holder()}); wait for it to finish, "
                "then run this command again"
            ) from None
        yield
    finally:
        os.close(fd)  # and with it the lock
