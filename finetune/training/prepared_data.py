"""The training data, prepared: the recipe's splits decoded once into the cache the Trainer
reads, the data report, and the checks that stop a run before any training time is spent."""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from finetune import data
from finetune.evaluation.eval_sets import EvalSet
from finetune.recipe import Recipe

logger = logging.getLogger("finetune")


@dataclass
class Prepared:
    splits: data.Splits
    train: Any
    validation: Any | None
    eval: Any
    data_report: dict[str, Any]
    #: data.eval_sets, decoded and mapped onto the model's classes
    #: (:mod:`finetune.evaluation.eval_sets`).
    eval_sets: dict[str, EvalSet] = field(default_factory=dict)


def prepare_data(recipe: Recipe, processor, seed: int, with_eval: bool = True) -> Prepared:
    """The decoded train, validation and eval pieces. ``with_eval`` false (a search trial):
    the eval split is not decoded nor touched at all, and ``Prepared.eval`` is None."""
    cfg = recipe.data
    raw = data.load_raw(cfg)
    splits = data.make_splits(raw, cfg, seed)
    workers = cfg.preprocessing_num_workers
    # Noted in the index of decode caches, for `finetune cache` (finetune.data.cache_store).
    owner = data.CacheOwner(cfg.dataset, recipe.output_dir)
    # A split that is randomly cropped every step is stored channels-last, the layout
    # torch's uint8 resize works in (data.decode); the others as the model takes them.
    crops = cfg.augment.crop_scale is not None and not recipe.model.caches_features
    decoded = {
        "train": data.decode(
            splits.train, processor, splits.image_column, splits.label_column, workers, "decoding train", channels_last=crops,
            owner=owner,
        ),
    }
    if splits.validation is not None:
        decoded["validation"] = data.decode(
            splits.validation, processor, splits.image_column, splits.label_column, workers, "decoding validation",
            owner=owner,
        )
    if with_eval and splits.eval is splits.validation and "validation" in decoded:
        decoded["eval"] = decoded["validation"]
    elif with_eval:
        decoded["eval"] = data.decode(
            splits.eval, processor, splits.image_column, splits.label_column, workers, "decoding eval", owner=owner
        )
    # With eval_split null the eval piece is the validation piece: count it once.
    pieces = {name: d for name, d in decoded.items() if not (name == "eval" and d is decoded.get("validation"))}
    report = {
        "dataset": cfg.dataset,
        "splits": {name: {"images": len(d.dataset) + len(d.bad), "bad": len(d.bad)} for name, d in pieces.items()},
        "bad_files": [dict(item, split=name) for name, d in pieces.items() for item in d.bad],
        "junk_files_ignored": data.count_junk(cfg.dataset),
        "max_bad_fraction": cfg.max_bad_fraction,
        "notes": splits.notes,
    }
    validation = decoded["validation"].dataset if "validation" in decoded else None
    evaluation = decoded["eval"].dataset if "eval" in decoded else None
    _log_cache_files([d.dataset for d in pieces.values()], recipe.output_dir)
    return Prepared(splits, decoded["train"].dataset, validation, evaluation, report)


def _log_cache_files(decoded: list[Any], out: str) -> None:
    """One line: where the run's decode cache is, its size, and the command that removes it
    (it holds every image, decoded, and outlives the run's folder unless removed)."""
    files = sorted({f["filename"] for d in decoded for f in d.cache_files})
    if not files:
        return  # decoded in memory
    folders = sorted({os.path.dirname(f) for f in files})
    size = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    logger.info(
        "data: the decode cache of this run is %s in %s; `finetune cache remove --run %s` removes it "
        "(`finetune cache list` lists every decode cache)",
        f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB", ", ".join(folders), shlex.quote(str(out)),
    )


def check_prepared(prepared: Prepared, cfg) -> None:
    """Stop before training when too many images are unreadable or a class lost them all."""
    # The share is taken per source split: the validation piece is part of train.
    groups = {cfg.train_split: ("train", "validation"), cfg.eval_split or "eval": ("eval",)}
    counts = prepared.data_report["splits"]
    for name, pieces in groups.items():
        total = sum(counts[p]["images"] for p in pieces if p in counts)
        bad = sum(counts[p]["bad"] for p in pieces if p in counts)
        if total and bad / total > cfg.max_bad_fraction:
            first = next(b for b in prepared.data_report["bad_files"] if b["split"] in pieces)
            raise data.DataError(
                f"data: {bad} of {total} images in '{name}' cannot be read ({100 * bad / total:.1f}% > "
                f"data.max_bad_fraction {cfg.max_bad_fraction:g}), e.g. {first['path']}: {first['reason']}; "
                "fix or remove them (all are listed in data_report.json), or raise data.max_bad_fraction"
            )
    # The real cause when a class has no training image left: all of its files unreadable,
    # or none in the split at all.
    reason = data.empty_class_reason(prepared.splits, prepared.train["labels"][:])
    if reason is not None:
        raise data.DataError(reason)
