"""``finetune inspect``: the recipe's data prepared as training prepares it, one pass of its
pretrained backbone, then the findings (label issues, duplicates and leakage, outliers,
class balance) written under ``<output_dir>/inspect/``.

It never changes what a training run has in the output folder: it writes under
``inspect/`` only, recorded in the folder's manifest before it is made
(:mod:`finetune.training.run_files`: the report is finetune's, kept by a fresh run and
removed by ``--overwrite`` with the rest of the run), holds the folder's lock while it runs
(a training run there refuses to start meanwhile, and it refuses to start while a run holds
it), and refuses a folder whose run was of other data or another backbone, a folder of files
finetune did not make, and an ``inspect/`` that is not its own. The eval split and the eval sets are never
fitted on: their label checks come from a probe fitted on the training split alone, with
the training split's thresholds; they are compared with the training images for leakage.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune import data
from finetune.evaluation import eval_sets as eval_sets_lib
from finetune.inspection import confident, duplicates, outliers
from finetune.inspection.parts import MULTI_LABEL_NOTE, Part, build_parts
from finetune.models.classifier import ModelError, load_processor
from finetune.probe.backbone import BackboneFeatures, backbone_features
from finetune.recipe import DataConfig, Recipe
from finetune.training import run_files
from finetune.training.arguments import data_seed
from finetune.training.output_dir import OutputDirError, OutputLock, check_output_path
from finetune.training.prepared_data import check_prepared, prepare_data
from finetune.utils import progress

logger = logging.getLogger("finetune")

#: The report's folder inside the output folder, and the file written last.
FOLDER = run_files.INSPECT_FOLDER
SUMMARY = "summary.json"
#: Which images' labels are checked (``--split``).
SPLITS = ("train", "eval", "all")
#: Recipe keys whose change makes an output folder's run another data set's or backbone's.
_SAME_DATA_KEYS = ("data", "model.name_or_path", "model.revision")


@dataclass
class Options:
    """What the command line chose; None: from the recipe."""

    folds: int = 5
    top: int = 20
    threshold: float | None = None  # None: data.duplicate_threshold
    split: str = "all"
    mirror: bool | None = None  # None: data.augment.hflip
    batch_size: int = 64
    seed: int | None = None  # None: the recipe's data seed


@dataclass
class Findings:
    """Everything the report says (``finetune.inspection.report`` writes it)."""

    recipe: Recipe
    options: Options
    parts: list[Part]
    class_names: list[str]
    backbone: BackboneFeatures
    #: The label check's out-of-fold probe; None for multi-label data (no check).
    oof: confident.OutOfFold | None
    #: Part index → its label check (the parts whose labels were checked).
    issues: dict[int, confident.LabelIssues] = field(default_factory=dict)
    probabilities: dict[int, np.ndarray] = field(default_factory=dict)
    within: dict[int, duplicates.Within] = field(default_factory=dict)
    #: Eval-part index → (its leak verdict against the training part, the leaked pairs).
    leaks: dict[int, tuple[Any, list[duplicates.Pair]]] = field(default_factory=dict)
    centres: dict[int, outliers.Centres] = field(default_factory=dict)
    fence: float = -np.inf
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ the output folder


def check_folder(recipe: Recipe) -> Path:
    """The folder the report goes in, ``<output_dir>/inspect``, after the checks that keep a
    user's files safe: the output folder is a folder (or can be made one); if it holds a
    finetune run, that run's recipe has the same data and backbone; without a run it holds
    nothing finetune did not make; an existing ``inspect/`` is finetune's (its manifest, or
    for an earlier version's run only the report's files in it). Files of the user's put into
    ``inspect/`` stay: a rerun replaces only the report's. Raises OutputDirError (one line, with the fix)."""
    out = Path(recipe.output_dir)
    check_output_path(out)
    report = out / FOLDER
    if report.is_symlink() or (report.exists() and not report.is_dir()):
        raise OutputDirError(
            f"output_dir: '{report}' is a {'link' if report.is_symlink() else 'file'}, where finetune inspect writes "
            "its report; move it away"
        )
    if not out.exists():
        return report
    found = run_files.survey(out)
    previous = out / "recipe.json"
    if previous.is_file():
        try:
            old = json.loads(previous.read_text())
        except (OSError, ValueError):
            raise OutputDirError(f"output_dir: '{previous}' is unreadable; choose another output_dir (--set output_dir=...)") from None
        differences = _differences(old, recipe.to_dict())
        if differences:
            shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
            raise OutputDirError(
                f"output_dir: '{out}' holds a run of other data or another backbone ({shown}); inspect that run's "
                "folder as it is, or choose another output_dir (--set output_dir=...)"
            )
    if FOLDER in found.foreign:
        raise OutputDirError(
            f"output_dir: '{report}' holds files that are not a finetune inspect report; move them away or "
            "choose another output_dir (--set output_dir=...)"
        )
    foreign = [p for p in found.foreign if not p.startswith(FOLDER + "/")]
    if foreign and not previous.is_file():
        raise OutputDirError(
            f"output_dir: '{out}' holds files that are not a finetune run ({found.describe(foreign)}); "
            "choose another output_dir (--set output_dir=...)"
        )
    return report


def _record(out: Path) -> None:
    """``inspect/`` into the folder's manifest before it is written, so that it is finetune's:
    started when there is none, but for an earlier version's run (whose report the names cover,
    as for ``finetune eval``)."""
    earlier_run = not run_files.has_manifest(out) and (out / "recipe.json").is_file()
    run_files.record(out, FOLDER, create=not earlier_run)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old → new`` for the keys of :data:`_SAME_DATA_KEYS` that differ; a key that
    ``old`` lacks (written by an earlier finetune) counts with its default."""
    out = []
    defaults = Recipe().to_dict()

    def filled(value: Any, default: Any) -> Any:
        if not isinstance(value, dict) or not isinstance(default, dict):
            return value
        return {**default, **{k: filled(v, default.get(k)) for k, v in value.items()}}

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}")
        elif a != b:
            out.append(f"{prefix}: {json.dumps(a)} → {json.dumps(b)}")

    for key in _SAME_DATA_KEYS:
        section, _, name = key.partition(".")
        a, b, d = old.get(section), new.get(section), defaults.get(section)
        if name:
            a, b, d = (a or {}).get(name), (b or {}).get(name), (d or {}).get(name)
        walk(filled(a, d), b, key)
    return out


# --------------------------------------------------------------------------- analysis


def _device(recipe: Recipe) -> torch.device:
    if recipe.training.get("use_cpu") or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _eval_set_rows(sets: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """Each eval set's undecoded split and image column (the decoded one keeps its row order)."""
    out = {}
    for name, evaluation in sets.items():
        cfg = evaluation.cfg
        as_data = DataConfig(dataset=cfg.dataset, config=cfg.config, revision=cfg.revision, train_split=cfg.split,
                             eval_split=None, image_column=cfg.image_column, label_column=cfg.label_column)
        rows = data.load_raw(as_data)[cfg.split]
        out[name] = (rows, data.find_columns(rows, as_data)[0])
    return out


class _Clock:
    """Seconds per step, for the summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(now - self._start, 2)
        self._start = now


def analyse(recipe: Recipe, options: Options) -> Findings:
    """Prepare the data, run the backbone once, and find what the report shows."""
    clock = _Clock()
    cfg = recipe.data
    threshold = cfg.duplicate_threshold if options.threshold is None else options.threshold
    mirror = cfg.augment.hflip if options.mirror is None else options.mirror
    seed = data_seed(recipe) if options.seed is None else options.seed
    options = Options(options.folds, options.top, threshold, options.split, mirror, options.batch_size, seed)
    processor = load_processor(recipe.model, cfg.image_size)
    prepared = prepare_data(recipe, processor, data_seed(recipe))
    check_prepared(prepared, cfg)
    sets = {}
    if cfg.eval_sets:
        sets = eval_sets_lib.prepare(cfg.eval_sets, prepared.splits.class_names, processor, cfg.preprocessing_num_workers, cfg.max_bad_fraction)
    names = prepared.splits.class_names
    parts = build_parts(prepared, cfg, sets, _eval_set_rows(sets))
    training = parts[0]
    multi = prepared.splits.multi_label
    largest = int(training.class_counts().max())
    if not multi and largest < options.folds:
        raise data.DataError(
            f"--folds {options.folds}: no class of the training split has that many images (the largest has "
            f"{largest}), so the folds cannot be stratified; give --folds {max(2, largest)} or fewer"
        )
    clock.lap("data")

    for part in parts:
        hashes, thumbs = [], []
        for piece in part.pieces:
            found = data.signatures(piece.decoded, processor, desc=f"pixel signatures ({part.name})")
            hashes += found.hashes
            thumbs.append(found.thumbnails)
        part.hashes, part.thumbnails = hashes, torch.cat(thumbs)
    clock.lap("pixel signatures")

    datasets = [piece.decoded for part in parts for piece in part.pieces]
    try:
        computed = backbone_features(
            recipe.model, names, processor, datasets, mirror=mirror, batch_size=options.batch_size, device=_device(recipe)
        )
    except ModelError as err:
        reason = str(err).split(";")[0].replace("model.feature_cache: ", "", 1)
        raise ModelError(f"model.name_or_path: finetune inspect cannot read this model's features ({reason})") from None
    it = iter(computed.features)
    for part in parts:
        part.features = torch.cat([next(it) for _ in part.pieces])
    logger.info(
        "inspect: the pretrained backbone ran over %d images%s in %.1f s (%s)",
        sum(len(p) for p in parts), ", each also mirrored" if mirror else "", computed.seconds, computed.runtime,
    )
    clock.lap("features")

    if multi:
        # Confident learning ranks an image's one given class against the others; an image of
        # several classes (or none) has no such class, so the check is left out.
        findings = Findings(recipe, options, parts, names, computed, None)
        findings.notes.append(MULTI_LABEL_NOTE)
        logger.info("inspect: %s", MULTI_LABEL_NOTE)
        return _rest(findings, training, threshold, clock)
    # At most: the λ path on every fold, or on one and then the others once (``confident.out_of_fold``).
    most = len(confident.L2_GRID) * (options.folds if len(training) <= confident.PATH_ON_ONE_FOLD else 1)
    most += 0 if len(training) <= confident.PATH_ON_ONE_FOLD else options.folds - 1
    fits = progress.bar(None, total=most, desc="label check (out-of-fold fits)", unit="fit")
    oof = confident.out_of_fold(training.features, training.labels, len(names), options.folds, seed, on_fit=lambda l2, k: fits.update(1))
    fits.close()
    findings = Findings(recipe, options, parts, names, computed, oof)
    counts = np.bincount(training.labels, minlength=len(names))
    few = [names[c] for c in np.flatnonzero(counts < options.folds)]
    if few:
        findings.notes.append(
            f"class(es) {', '.join(few[:10])} have fewer training images than the {options.folds} folds: each fold's "
            "probe sees fewer of them, so their images' label checks are less sure"
        )
    checked = ([0] if options.split in ("train", "all") else []) + (list(range(1, len(parts))) if options.split in ("eval", "all") else [])
    training_issues = confident.find_label_issues(oof.probabilities, training.labels)
    if 0 in checked:
        findings.issues[0], findings.probabilities[0] = training_issues, oof.probabilities
    others = [i for i in checked if i != 0]
    if others:
        fit = confident.fit_all(training.features, training.labels, len(names), oof.l2)
        for i in others:
            probs = confident.probabilities(fit, parts[i].features)
            findings.probabilities[i] = probs
            findings.issues[i] = confident.find_label_issues(probs, parts[i].labels, training_issues.thresholds)
    clock.lap("label issues")
    return _rest(findings, training, threshold, clock)


def _rest(findings: Findings, training: Part, threshold: float, clock: _Clock) -> Findings:
    """Duplicates, leakage and outliers: what needs no label check."""
    parts, names = findings.parts, findings.class_names
    total = sum(len(p) for p in parts) * len(duplicates.VIEWS) + sum(len(p) for p in parts[1:]) * len(duplicates.VIEWS)
    bar = progress.bar(None, total=total, desc="similarity search")
    for i, part in enumerate(parts):
        findings.within[i] = duplicates.within(i, part, threshold, on_block=bar.update)
    for i, part in enumerate(parts[1:], start=1):
        findings.leaks[i] = duplicates.leaks(0, training, i, part, threshold, on_block=bar.update)
    bar.close()
    clock.lap("duplicates")

    centres = outliers.class_centres(training.features, training.labels, len(names))
    for i, part in enumerate(parts):
        findings.centres[i] = outliers.against(part.features, part.labels, centres)
    findings.fence = outliers.fence(findings.centres[0].similarity)
    clock.lap("outliers")
    findings.seconds = clock.seconds
    return findings


def run_inspect(recipe: Recipe, options: Options) -> tuple[Findings, Path]:
    """Check the folder, lock it, analyse, write the report; returns the findings and the
    report's folder. The lock is held from before the data is read until the report is
    written, so a training run cannot start in the folder meanwhile."""
    from finetune.inspection import report

    folder = check_folder(recipe)
    out = folder.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"output_dir: cannot make '{out}' ({err.strerror}); choose another output_dir") from None
    lock = OutputLock(out).acquire()
    try:
        lock.write_holder()
        check_folder(recipe)  # again, under the lock: a run may have started in between
        start = time.perf_counter()
        findings = analyse(recipe, options)
        _record(out)
        report.write(folder, findings)
        findings.seconds["total"] = round(time.perf_counter() - start, 2)
        report.write_summary(folder, findings)
    finally:
        lock.release()
    return findings, folder
