"""The training data, prepared: the recipe's splits decoded once into the cache the Trainer
reads, the data report, and the checks that stop a run before any training time is spent."""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from finetune import data
from finetune.evaluation.eval_sets import EvalSet
from finetune.probe.backbone import backbone_features
from finetune.probe.neighbours import find_leaks, normalise
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
        "task": "multi_label" if splits.multi_label else "single_label",
    }
    if splits.multi_label:
        report["labels"] = _label_report({name: d.dataset for name, d in pieces.items()}, splits.class_names)
    validation = decoded["validation"].dataset if "validation" in decoded else None
    evaluation = decoded["eval"].dataset if "eval" in decoded else None
    _log_cache_files([d.dataset for d in pieces.values()], recipe.output_dir)
    return Prepared(splits, decoded["train"].dataset, validation, evaluation, report)


def _label_report(pieces: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Per decoded piece of multi-label data: images per class, classes per image (mean),
    images without a class (``data.label_summary``); one log line each."""
    out = {name: data.label_summary(d, "labels", names) for name, d in pieces.items()}
    for name, summary in out.items():
        counts = summary["images_per_label"]
        fewest = sorted(counts, key=lambda c: (counts[c], c))[:3]
        logger.info(
            "data: %s: multi-label, %.2f classes per image (mean), %d image(s) without a class; images per class "
            "from %d (%s) to %d (all in data_report.json)",
            name, summary["labels_per_image"], summary["images_without_label"], counts[fewest[0]] if fewest else 0,
            ", ".join(fewest), max(counts.values(), default=0),
        )
    return out


def label_texts(dataset, names: list[str], multi_label: bool, rows=None) -> list[str]:
    """The given label of each of ``rows`` (all: None) of a decoded split as text: its class, or
    for multi-label data its classes joined by ";" (an empty string for none)."""
    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    if not multi_label:
        labels = np.asarray(data.column(dataset, "labels"))
        return [names[int(labels[i])] for i in rows]
    owner, classes = data.label_pairs(dataset, "labels")
    sets: list[list[str]] = [[] for _ in range(len(dataset))]
    for i, c in zip(owner.tolist(), classes.tolist()):
        sets[i].append(names[c])
    return [";".join(sets[i]) for i in rows]


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
    kept = data.label_pairs(prepared.train, "labels")[1] if prepared.splits.multi_label else prepared.train["labels"][:]
    reason = data.empty_class_reason(prepared.splits, kept)
    if reason is not None:
        raise data.DataError(reason)


# ------------------------------------------------------------ eval images leaked from training


def _training_pieces(prepared: Prepared) -> list[tuple[Any, Any]]:
    """(decoded, selected) of the images the eval split is compared with: the train piece,
    and the validation piece unless it is what gets reported."""
    s = prepared.splits
    pieces = [(prepared.train, s.train)]
    if prepared.validation is not None and prepared.validation is not prepared.eval:
        pieces.append((prepared.validation, s.validation))
    return pieces


def drop_leaked_eval(prepared: Prepared, recipe: Recipe, processor, args: Any = None) -> Prepared:
    """``data.leaked_eval: "drop"``: the eval split without its images that duplicate a
    training image, found as ``finetune inspect`` finds them (the same pixels, or a cosine
    similarity of at least ``data.duplicate_threshold`` between thumbnails or between the
    pretrained backbone's features, each image also mirrored when ``data.augment.hflip``);
    the data report lists them. One pass of the backbone over the training and eval images
    is the cost. ``args``: the run's TrainingArguments (device, batch size, progress bars)."""
    cfg = recipe.data
    pieces = _training_pieces(prepared)
    decoded = [d for d, _ in pieces] + [prepared.eval]
    found = [data.signatures(d, processor, desc="pixel signatures", args=args) for d in decoded]
    features = backbone_features(
        recipe.model, prepared.splits.class_names, processor, decoded, mirror=cfg.augment.hflip,
        batch_size=getattr(args, "per_device_eval_batch_size", 64), device=getattr(args, "device", None), args=args,
    ).features
    train_views = [torch.cat([f.thumbnails for f in found[:-1]]), normalise(torch.cat(features[:-1]))]
    eval_views = [found[-1].thumbnails, normalise(features[-1])]
    hashes = [h for f in found[:-1] for h in f.hashes]
    leaks = find_leaks(train_views, hashes, eval_views, found[-1].hashes, cfg.duplicate_threshold)
    # Each training row's row in the training split, for the report.
    train_rows = np.concatenate([data.split_rows(sel, dec)[1] for dec, sel in pieces])
    eval_selected = prepared.splits.validation if prepared.eval is prepared.validation else prepared.splits.eval
    eval_logical, eval_rows = data.split_rows(eval_selected, prepared.eval)
    dropped = leaks.rows
    sources = data.image_sources(eval_selected, eval_logical[dropped], prepared.splits.image_column) if len(dropped) else []
    names = prepared.splits.class_names
    labels = label_texts(prepared.eval, names, prepared.splits.multi_label, dropped)
    record = {
        "policy": "drop",
        "threshold": cfg.duplicate_threshold,
        "backbone": recipe.model.name_or_path,
        "mirror": cfg.augment.hflip,
        "eval_images": len(prepared.eval),
        "dropped": len(dropped),
        "exact": int(leaks.exact.sum()),
        "near": int((leaks.leaked & ~leaks.exact).sum()),
        "images": [
            {
                "row": int(eval_rows[i]), "source": src, "label": label,
                "train_split_row": int(train_rows[leaks.nearest_train[i]]), "similarity": round(float(leaks.similarity[i]), 4),
                "exact": bool(leaks.exact[i]),
            }
            for i, src, label in zip(dropped, sources, labels)
        ],
    }
    return drop_eval_rows(prepared, dropped, record)


def drop_eval_rows(prepared: Prepared, rows, record: dict[str, Any]) -> Prepared:
    """``prepared`` with the eval split's ``rows`` (positions in the decoded eval split)
    removed, every other row kept in order, and ``record`` in the data report (under
    ``leaked_eval``, with a note) and the log. When the validation piece is what gets
    reported, it loses the same rows."""
    rows = np.asarray(rows, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(prepared.eval)), rows)
    evaluation = prepared.eval.select(keep) if len(rows) else prepared.eval
    validation = evaluation if prepared.validation is prepared.eval else prepared.validation
    note = (
        f"data.leaked_eval 'drop': {len(rows)} of {len(prepared.eval)} eval images duplicate a training image "
        f"({record.get('exact', 0)} with the same pixels, {record.get('near', 0)} with a similarity of at least "
        f"{record.get('threshold')}) and were left out of the eval split; the scores are on the other "
        f"{len(prepared.eval) - len(rows)} (data_report.json's leaked_eval lists them)"
    )
    report = dict(prepared.data_report, leaked_eval=record, notes=[*prepared.data_report.get("notes", []), note])
    logger.info("data: %s", note)
    return dataclasses.replace(prepared, eval=evaluation, validation=validation, data_report=report)
