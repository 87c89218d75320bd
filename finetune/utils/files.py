"""Files written safely: JSON through a rename, the Trainer's metrics files, and the modes new files get."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any


def write_json(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so a crash never leaves it half-written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


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


def follow_umask(folder: Path) -> None:
    """Give every ``*.safetensors`` file under ``folder`` the mode any new file gets there
    (``0o666 & ~umask``, 0644 under the usual umask 022).

    safetensors writes its file as a temporary file created with mode 0600 and renamed into
    place, so the weights alone would be readable by their owner only: not by a teammate,
    a serving container running as another user, or a web server. Files of other owners
    are left alone (they are not ours to change, and chmod would fail).
    """
    if os.name != "posix":  # Windows has no group/other permission bits to fix
        return
    mode = 0o666 & ~current_umask()
    uid = os.getuid()
    for path in Path(folder).rglob("*.safetensors"):
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_uid == uid and stat.S_IMODE(info.st_mode) != mode:
            os.chmod(path, mode)


def slug(text: str, fallback: str) -> str:
    """A folder-name-safe version of ``text`` (a data set name, a split, a study cell's
    value): runs of other characters become one '-'; ``fallback`` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-.") or fallback
