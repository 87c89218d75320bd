"""Which files of an output folder are a run's own: the manifest a run writes as it goes, the names earlier versions wrote, and what ``--overwrite`` removes.

The manifest (:data:`MANIFEST`) is JSON Lines, one ``{"path": ...}`` per file or folder the run
(or a ``finetune eval`` / ``export`` writing into it) made, relative to the folder. A path is
added *before* it is written, by appending one line with ``O_APPEND``: a kill at any moment
leaves every file that exists listed (a listed name that was never written costs nothing),
at most the last line cut off (skipped when read), and two readers writing reports at once
(they share the folder's lock) cannot lose each other's lines. A folder listed is the run's
whole, with all that is in it, but for ``finetune inspect``'s, where only the report's files are.

A folder written by a version before the manifest counts as a run when it holds
``recipe.json``; then finetune's own file names are the run's, and the
first run that claims the folder writes them into a manifest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from transformers import TrainerCallback

from finetune.utils.files import follow_umask, is_temporary

#: The run's list of what it made (JSON Lines), beside the lock files.
MANIFEST = ".finetune-manifest.jsonl"
#: The lock a run holds on its output folder, and who holds it (pid, host, start, command):
#: :class:`finetune.training.output_dir.OutputLock`. With the manifest, the folder's own
#: files rather than a run's: never removed, never foreign.
LOCK_NAME = ".finetune.lock"
HOLDER_NAME = ".finetune.lock.json"
CONTROL_FILES = frozenset({LOCK_NAME, HOLDER_NAME, MANIFEST})
_HEADER = {"finetune_manifest": 1}
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

#: What a run, ``finetune eval`` and ``finetune export`` write at the top of a run's folder:
#: the files an earlier version without a manifest made (and so counts as its own), and the
#: names a rerun writes again (a file of the user's under one of them stops the rerun).
KNOWN_FILES = frozenset({
    "recipe.json", "data_report.json", "README.md", "config.json", "preprocessor_config.json",
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "training_args.bin",
    "trainer_state.json", "train_results.json", "eval_results.json", "all_results.json", "eval_report.json",
    "confusion_matrix.png", "misclassified.png", "training_curves.png", "lp_head.safetensors",
    "calibration.json", "reliability.png", "per_class_ap.png", "worst_images.png",
})
#: What an eval report folder (``eval-*/``) holds.
REPORT_FILES = frozenset({
    "eval_report.json", "confusion_matrix.png", "misclassified.png", "training_curves.png", "reliability.png",
    "per_class_ap.png", "worst_images.png",
})
#: ``finetune inspect``'s report folder, and the files it writes there. Recorded whole when
#: inspect makes it, yet a file of another name put into it stays the user's (a reviewed list,
#: notes): ``--overwrite`` then refuses rather than take it with the report.
INSPECT_FOLDER = "inspect"
INSPECT_FILES = re.compile(
    r"^(report\.md|summary\.json|label_issues\.csv|duplicates\.csv|outliers\.csv|class_balance\.csv|"
    r"label_issues_[A-Za-z0-9_-]+\.png|duplicates\.png|outliers\.png|class_balance\.png|similarity\.png)$"
)
_CHECKPOINT = re.compile(r"^checkpoint-\d+$")
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
#: What ``finetune export`` leaves when killed mid-way (its folder is made under this name, then renamed).
_PARTIAL = re.compile(r"^\..+\.partial-[A-Za-z0-9_]+$")


def _relative(out: Path, path: str | Path) -> str:
    """``path`` (absolute, or relative to ``out``) as a manifest entry: posix, relative, no ``..``."""
    path = Path(path)
    rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out))) if path.is_absolute() else path
    entry = PurePosixPath(*rel.parts)
    if not entry.parts or entry.is_absolute() or ".." in entry.parts or entry.parts == (".",):
        raise ValueError(f"'{path}' is not inside '{out}'")
    return entry.as_posix()


def _valid(entry: object) -> bool:
    if not isinstance(entry, str) or not entry or "\\" in entry:
        return False
    parts = PurePosixPath(entry).parts
    return not PurePosixPath(entry).is_absolute() and ".." not in parts and "." not in parts and bool(parts)


def has_manifest(out: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(Path(out) / MANIFEST).st_mode)
    except OSError:
        return False


def recorded(out: Path) -> set[str] | None:
    """The paths the manifest of ``out`` lists; None when it has none (an earlier version's
    run, or no run). Lines that do not parse (the last one, cut off by a kill) are skipped, and
    so is any path that would lead out of the folder."""
    if not has_manifest(out):
        return None
    try:
        fd = os.open(Path(out) / MANIFEST, os.O_RDONLY | _NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    entries = set()
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and _valid(item.get("path")):
            entries.add(item["path"])
    return entries


def record(out: Path, *paths: str | Path, create: bool = True) -> None:
    """Add ``paths`` (inside ``out``) to its manifest, before they are written. ``create``:
    start the manifest if there is none (a run does; a reader writing into an earlier
    version's run leaves that run to the known-names rule)."""
    out = Path(out)
    have = recorded(out)
    if have is None and not create:
        return
    entries = list(dict.fromkeys(_relative(out, p) for p in paths))
    new = [e for e in entries if e not in (have or ())]
    if not new and have is not None:
        return
    # O_NOFOLLOW: a link planted at the manifest's name is never written through.
    fd = os.open(out / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        lines = [_HEADER] if os.fstat(fd).st_size == 0 else []
        # One write: appends of a few hundred bytes land whole, between other processes' lines.
        os.write(fd, "".join(json.dumps(x) + "\n" for x in lines + [{"path": e} for e in new]).encode("utf-8"))
    finally:
        os.close(fd)


def record_made(run: Path, target: Path, files: Iterable[str] | None = None) -> None:
    """Before a reader (``finetune eval``, ``export``) writes ``target`` in the folder of the
    run ``run``: its manifest gets the first folder on the way that is about to be made, or,
    when ``target`` is there already, the ``files`` to be written in it (None: ``target``
    itself, which the writer replaces whole). Nothing for a target outside the run, or a run
    without a manifest (the known names cover an earlier version's)."""
    rel = Path(os.path.relpath(os.path.abspath(target), os.path.abspath(run)))
    if rel.parts[0] in ("..", "."):
        return
    for depth in range(1, len(rel.parts) + 1):
        if not os.path.lexists(run / Path(*rel.parts[:depth])):
            record(run, Path(*rel.parts[:depth]), create=False)
            return
    record(run, *((rel / name for name in files) if files is not None else [rel]), create=False)


def start_afresh(out: Path, keep: Iterable[str] = ()) -> None:
    """A new manifest listing only ``keep`` (what ``--overwrite`` could not remove)."""
    from finetune.utils.files import write_text

    lines = [_HEADER, *({"path": e} for e in sorted(set(keep)))]
    write_text(Path(out) / MANIFEST, "".join(json.dumps(x) + "\n" for x in lines))


def written_by_a_run(name: str) -> bool:
    """Whether a run writes a file or folder named ``name`` at the top of its folder."""
    return name in KNOWN_FILES or bool(_SHARD.match(name) or _CHECKPOINT.match(name))


def _legacy_own(path: Path) -> bool:
    """Whether ``path``, at the top of a run written before the manifest, is the run's (or a
    ``finetune eval`` / ``export`` of it): a name finetune writes there, and for the folders
    whose names a user could pick too, the content finetune puts in them."""
    name = path.name
    if written_by_a_run(name) or (name.endswith(".tmp") and name[:-4] in KNOWN_FILES):
        return True  # (NAME.tmp: an earlier version's temporary file)
    if path.is_symlink() or not path.is_dir():
        return False
    if name == "runs":  # TensorBoard's event files, one folder per run
        return all(p.name.startswith("events.out.tfevents.") for p in path.rglob("*") if not p.is_dir())
    if name == "onnx":
        return (path / "export_report.json").is_file()
    if name == INSPECT_FOLDER:  # inspect writes into a run without a manifest as a reader does
        return _only_reports(path, _inspect_file)
    return name.startswith("eval-") and _only_reports(path)


def _inspect_file(name: str) -> bool:
    return INSPECT_FILES.match(name) is not None


def _only_reports(folder: Path, report_file=REPORT_FILES.__contains__) -> bool:
    try:
        return all(
            (report_file(p.name) or is_temporary(p.name)) and not p.is_symlink() and p.is_file()
            for p in folder.iterdir()
        )
    except OSError:
        return False


def _scratch(name: str, siblings: set[str]) -> bool:
    """A temporary file finetune leaves when killed mid-write: ``replacing``'s random names,
    ``export``'s partial folder, and an earlier version's ``NAME.tmp`` beside a file of the
    run's (``siblings``: the run's names in the same folder)."""
    earlier = name.endswith(".tmp") and (name[:-4] in siblings or name[:-4] in CONTROL_FILES)
    return earlier or is_temporary(name) or bool(_PARTIAL.match(name))


def is_scratch(rel: str) -> bool:
    """Whether the path ``rel`` is a temporary file or folder finetune left (see ``_scratch``)."""
    return _scratch(PurePosixPath(rel).name, set(KNOWN_FILES))


@dataclass
class Survey:
    """What is in a run's folder now, whose it is."""

    #: Paths (relative) of the run's own that are there: what ``--overwrite`` removes.
    own: list[str] = field(default_factory=list)
    #: Paths that finetune did not make.
    foreign: list[str] = field(default_factory=list)
    #: Own paths that are symbolic links now (finetune never makes one).
    links: list[str] = field(default_factory=list)
    #: Whether the folder has a manifest (False: an earlier version's run, or none).
    manifest: bool = False

    def describe(self, paths: list[str], limit: int = 5) -> str:
        shown = ", ".join(sorted(paths)[:limit])
        return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def survey(out: Path) -> Survey:
    """Sort what is in ``out`` into the run's own and the rest. Without a manifest, the known
    names are the run's when ``recipe.json`` is there (an earlier version's run), else nothing is."""
    out = Path(out)
    listed = recorded(out)
    result = Survey(manifest=listed is not None)
    if not out.is_dir():
        return result
    if listed is None:
        legacy = (out / "recipe.json").is_file() and not (out / "recipe.json").is_symlink()
        listed = {p.name for p in out.iterdir() if legacy and _legacy_own(p)}
    for path in sorted(out.iterdir()):
        if path.name in CONTROL_FILES and path.is_file() and not path.is_symlink():
            continue
        _sort(path, path.name, listed, result)
    return result


def _sort(path: Path, rel: str, listed: set[str], result: Survey) -> None:
    parent = rel.rpartition("/")[0]
    siblings = {e.rpartition("/")[2] for e in listed if e.rpartition("/")[0] == parent}
    if rel == INSPECT_FOLDER and rel in listed and path.is_dir() and not path.is_symlink():
        if not _only_reports(path, _inspect_file):  # the report's files are its own, the rest the user's
            for child in sorted(path.iterdir()):
                mine = (_inspect_file(child.name) or is_temporary(child.name)) and not child.is_dir()
                (result.own if mine else result.foreign).append(f"{rel}/{child.name}")
                if mine and child.is_symlink():
                    result.links.append(f"{rel}/{child.name}")
            return
    if rel in listed or _scratch(path.name, siblings):
        result.own.append(rel)
        if path.is_symlink():
            result.links.append(rel)
    elif path.is_dir() and not path.is_symlink() and any(e.startswith(rel + "/") for e in listed):
        for child in sorted(path.iterdir()):  # a folder of someone else's that the run wrote into
            _sort(child, f"{rel}/{child.name}", listed, result)
    else:
        result.foreign.append(rel)


def collisions(found: Survey) -> list[str]:
    """Paths that are not the run's, or are links, under a name a rerun writes: a rerun would
    write over them (or through them)."""
    return sorted({p for p in found.foreign if "/" not in p and written_by_a_run(p)} | set(found.links))


def remove(out: Path, paths: Iterable[str]) -> list[str]:
    """Remove each of ``paths`` (inside ``out``), never following a link: a link is removed
    itself, and a path below a link is left alone. Returns those that could not be removed."""
    out = Path(out)
    left = []
    for rel in paths:
        target = _inside(out, rel)
        try:
            if target is None:
                continue
            if target.is_symlink() or not target.is_dir():
                target.unlink(missing_ok=True)
            else:
                shutil.rmtree(target)
        except OSError:
            left.append(rel)
    return left


def _inside(out: Path, rel: str) -> Path | None:
    """``out/rel`` when every folder on the way is a real folder (not a link), else None."""
    if not _valid(rel):
        return None
    path = out
    parts = PurePosixPath(rel).parts
    for part in parts[:-1]:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    return path / parts[-1]


class CheckpointFilesCallback(TrainerCallback):
    """Each checkpoint goes into the run's manifest before the Trainer writes it
    (:mod:`finetune.training.run_files`), and its weights get the mode any new file gets
    (``finetune.utils.files.follow_umask``: safetensors leaves them readable by their owner
    only). Add it after the callbacks that decide to save (the interrupts'): the Trainer
    saves after ``on_step_end`` / ``on_epoch_end`` when ``should_save`` is set then, or, with
    ``save_strategy: best``, after an evaluation that finds a new best."""

    def _before(self, args, state, control):
        best = str(getattr(args.save_strategy, "value", args.save_strategy)) == "best"
        if args.should_save and (control.should_save or (best and control.should_evaluate)):
            record(Path(args.output_dir), f"checkpoint-{state.global_step}")

    def on_step_end(self, args, state, control, **kwargs):
        self._before(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._before(args, state, control)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            follow_umask(Path(args.output_dir) / f"checkpoint-{state.global_step}")


#: What ``save_pretrained`` (through the Trainer's ``save_model``) writes for a classifier,
#: besides weight shards and a remote-code model's own modules (found by looking).
MODEL_FILES = (
    "config.json", "preprocessor_config.json", "model.safetensors", "model.safetensors.index.json", "training_args.bin",
)


@contextmanager
def writing(out: Path, *names: str, active: bool = True) -> Iterator[list[str]]:
    """Around a short write into ``out`` whose files a library names (the final save): ``names``
    go into the manifest before, and whatever else appears at the top of ``out`` meanwhile
    (weight shards, a remote-code model's modules) after it, also when it fails. Yields the list
    of what was recorded, filled in at the end. ``active``: False on the processes that do not
    write the folder's files (all but the main one)."""
    written: list[str] = []
    if not active:
        yield written
        return
    out = Path(out)
    before = set(os.listdir(out))
    record(out, *names)
    try:
        yield written
    finally:
        appeared = sorted(set(os.listdir(out)) - before - CONTROL_FILES - set(names))
        if appeared:
            record(out, *appeared)
        written += [*names, *appeared]
