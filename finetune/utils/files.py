"""Files written safely: through a new temporary file and a rename, the Trainer's metrics files, and the modes new files get."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

#: How the temporary files of :func:`replacing` end: ``.NAME.<random>.tmp`` beside ``NAME``.
TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


@contextmanager
def replacing(path: Path, binary: bool = True) -> Iterator[IO]:
    """A file object to write ``path``'s new content to, renamed over ``path`` when the block
    ends without an error (removed when it raises): a crash never leaves half a file.

    The temporary file is made by ``mkstemp`` in ``path``'s folder: a new random name, created
    exclusively, so a symbolic link planted under a fixed name (``NAME.tmp``) is never written
    through; the content goes through the descriptor mkstemp opened, never through a name
    looked up again. ``os.replace`` replaces a link at ``path`` itself, not what it points to.
    mkstemp makes the file readable by its owner only: it gets the mode any new file gets
    (``0o666 & ~umask``) before the rename.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            _set_new_file_mode(f.fileno(), tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _set_new_file_mode(fd: int, name: str) -> None:
    mode = 0o666 & ~current_umask()
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # Windows: no fchmod, and no group/other bits to set
        os.chmod(name, mode)


def is_temporary(name: str) -> bool:
    """Whether ``name`` is what :func:`replacing` leaves when a process dies mid-write."""
    return _TMP_NAME.match(name) is not None


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`replacing`."""
    with replacing(path) as f:
        f.write(data)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through :func:`replacing`."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write JSON through :func:`replacing`, so a crash never leaves it half-written."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def save_metrics(out: Path, split: str, metrics: dict[str, Any]) -> None:
    """What ``Trainer.save_metrics`` writes (``SPLIT_results.json``, merged into
    ``all_results.json``), each file through :func:`write_json`. The Trainer opens
    ``all_results.json`` for writing before it dumps: a signal in between left it empty,
    and the rerun that finishes the run then failed reading it. An unreadable one left
    by an older version starts afresh: every key in it is written again by this run."""
    out = Path(out)
    write_json(out / f"{split}_results.json", dict(sorted(metrics.items())))
    merged: dict[str, Any] = {}
    try:
        if (out / "all_results.json").is_symlink():  # not ours: its keys would be published
            raise OSError("a link")
        previous = json.loads((out / "all_results.json").read_text(encoding="utf-8"))
        if isinstance(previous, dict):
            merged = previous
    except (OSError, ValueError):
        pass
    merged.update(metrics)
    write_json(out / "all_results.json", dict(sorted(merged.items())))


def current_umask() -> int:
    """The process's umask. Read from /proc where Linux has it: the portable way (set it,
    then set it back) would give any file another thread creates meanwhile the wrong mode."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def follow_umask(*paths: Path) -> None:
    """Give the ``*.safetensors`` files among ``paths`` (each a file, or a folder the caller
    made, searched whole) the mode any new file gets there (``0o666 & ~umask``, 0644 under the
    usual umask 022). Pass only what this process wrote: the modes of other files, the
    user's own weights beside a run included, are not finetune's to change.

    safetensors writes its file as a temporary file created with mode 0600 and renamed into
    place, so the weights alone would be readable by their owner only: not by a teammate,
    a serving container running as another user, or a web server. Files of other owners
    are left alone (they are not ours to change, and chmod would fail), and so are links.
    """
    if os.name != "posix":  # Windows has no group/other permission bits to fix
        return
    mode = 0o666 & ~current_umask()
    uid = os.getuid()
    for given in map(Path, paths):
        if given.is_symlink():
            continue
        found = given.rglob("*.safetensors") if given.is_dir() else [given] if given.name.endswith(".safetensors") else []
        for path in found:
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_uid == uid and stat.S_IMODE(info.st_mode) != mode:
                os.chmod(path, mode)


def slug(text: str, fallback: str) -> str:
    """A folder-name-safe version of ``text`` (a data set name, a split, a study cell's
    value): runs of other characters become one '-'; ``fallback`` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-.") or fallback
