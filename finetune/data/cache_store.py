"""The decode caches on disk: an index entry per decoded split (which data set and runs it serves, its files, when it was last used), listing and removing them, and the part-written files a stopped worker leaves."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from finetune.utils.files import write_json
from finetune.utils.locations import cache_root

#: The index's format; an entry of another format is listed as unreadable and left alone.
_FORMAT = 1


def index_folder() -> Path:
    """Where the index of decode caches lives: one JSON file per decoded split."""
    return cache_root() / "decode-caches"


@dataclass(frozen=True)
class Owner:
    """What a decode pass is for: the recipe's data set and the run folder it trains into."""

    dataset: str
    run: str | None = None


@dataclass
class Entry:
    """One decoded split's cache: its files are ``cache-FINGERPRINT.arrow`` (and the
    ``_NNNNN_of_NNNNN`` shards of a pass with several workers) in ``folder``, one
    fingerprint per piece of the pass (see :mod:`finetune.data.decode_plan`)."""

    key: str
    folder: str
    fingerprints: list[str]
    dataset: str
    split: str
    runs: list[str] = field(default_factory=list)
    images: int = 0
    created: str = ""
    last_used: str = ""

    @property
    def path(self) -> Path:
        return index_folder() / f"{self.key}.json"

    def files(self) -> list[Path]:
        """The entry's files that exist: only names the decode pass gives its output, in
        its folder itself (never below it), and no symbolic link."""
        folder = Path(self.folder)
        if not folder.is_dir():
            return []
        found = []
        for fingerprint in self.fingerprints:
            pattern = re.compile(rf"cache-{re.escape(fingerprint)}(_\d{{5}}_of_\d{{5}})?\.arrow")
            for path in folder.glob(f"cache-{fingerprint}*.arrow"):
                if pattern.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                    found.append(path)
        return sorted(found)

    def size(self) -> int:
        return sum(path.stat().st_size for path in self.files())

    def last_used_at(self) -> datetime:
        try:
            return datetime.fromisoformat(self.last_used)
        except ValueError:
            return datetime.fromtimestamp(0)


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _read(path: Path) -> Entry | None:
    try:
        raw = json.loads(path.read_text())
        if raw.pop("format", None) != _FORMAT:
            return None
        return Entry(key=path.stem, **raw)
    except (OSError, ValueError, TypeError):
        return None


def _write(entry: Entry) -> None:
    """The entry's JSON through a temporary file of its own and a rename (two runs may write
    the same entry at once: each rename is whole)."""
    folder = index_folder()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(entry.path, {"format": _FORMAT, **{k: v for k, v in entry.__dict__.items() if k != "key"}})


def record(key: str, folder: str, fingerprints: list[str], owner: Owner, split: str, images: int) -> OSError | None:
    """Note in the index that ``folder`` holds (or will hold) the pieces ``fingerprints`` of a
    split of ``owner.dataset`` used by ``owner.run``: created or updated (its runs, its
    pieces, its last use). A decode pass calls it before it maps, so a pass that is stopped
    leaves its finished pieces indexed too. An index that cannot be written costs only the
    listing: the decode pass goes on (the error is returned for the log)."""
    try:
        entry = _read(index_folder() / f"{key}.json") or Entry(
            key=key, folder=folder, fingerprints=[], dataset=owner.dataset, split=split, created=_now()
        )
        entry.folder, entry.images = folder, images
        entry.fingerprints += [f for f in fingerprints if f not in entry.fingerprints]
        run = str(Path(owner.run).resolve()) if owner.run else None
        if run is not None and run not in entry.runs:
            entry.runs.append(run)
        entry.last_used = _now()
        _write(entry)
    except OSError as err:
        return err
    return None


def entries() -> list[Entry]:
    """Every readable entry of the index, the most recently used first."""
    folder = index_folder()
    found = [e for p in sorted(folder.glob("*.json")) if (e := _read(p)) is not None] if folder.is_dir() else []
    return sorted(found, key=lambda e: e.last_used_at(), reverse=True)


def select(
    every: list[Entry], run: str | None = None, older_than_days: float | None = None, orphaned: bool = False,
    everything: bool = False,
) -> list[Entry]:
    """The entries that a ``finetune cache remove`` choice names: those a run folder used,
    those last used more than a number of days ago, those whose runs' folders are all gone,
    or all of them."""
    if everything:
        return list(every)
    if run is not None:
        wanted = str(Path(run).resolve())
        return [e for e in every if wanted in e.runs]
    if older_than_days is not None:
        limit = datetime.now() - timedelta(days=older_than_days)
        return [e for e in every if e.last_used_at() < limit]
    if orphaned:
        return [e for e in every if e.runs and not any(Path(r).is_dir() for r in e.runs)]
    return []


def remove(entry: Entry) -> int:
    """Delete the entry's files (:meth:`Entry.files`: nothing else) and its index file;
    returns the bytes freed."""
    freed = 0
    for path in entry.files():
        size = path.stat().st_size
        path.unlink()
        freed += size
    entry.path.unlink(missing_ok=True)
    return freed


def remove_open_temporaries() -> None:
    """Delete the part-written files this process has open in a ``datasets`` cache folder:
    what a decode worker, stopped mid-piece, would otherwise leave there for good
    (``datasets.map`` writes each piece to a ``tmpXXXXXXXX`` file and renames it when
    whole). Read from ``/proc/self/fd``; elsewhere (no ``/proc``) nothing is removed."""
    fds = Path("/proc/self/fd")
    try:
        names = os.listdir(fds)
    except OSError:
        return
    for name in names:
        try:
            target = Path(os.readlink(fds / name))
        except OSError:
            continue
        folder = target.parent
        in_cache = (folder / "dataset_info.json").is_file() or any(folder.glob("cache-*.arrow"))
        if re.fullmatch(r"tmp[A-Za-z0-9_]{8}", target.name) and in_cache and target.is_file():
            target.unlink(missing_ok=True)
