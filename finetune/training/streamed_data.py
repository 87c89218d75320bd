"""The streaming input path of a run: whether it streams (``data.streaming``), its streamed splits and data report, and its loader workers.

"auto" streams when the decode cache it would otherwise write is estimated above
:data:`AUTO_CACHE_LIMIT` or above the free disk where ``datasets`` keeps its cache, and the
recipe needs nothing that only the cache gives; the main process decides and every
process follows, so a multi-machine run never splits between the two paths.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune import data
from finetune.data.streaming import pieces as validation_pieces
from finetune.data.streaming.images import ImagePipeline, decode_upright
from finetune.data.streaming.open import open_stream
from finetune.data.streaming.sources import ListedSplit, ShardedSplit, StreamSource
from finetune.data.streaming.stream import ImageStream
from finetune.recipe import Recipe
from finetune.recipe.checks import needs_decode_cache
from finetune.training.prepared_data import Prepared

logger = logging.getLogger("finetune")

#: "auto" streams above this estimated decode cache (bytes): the cache takes a decode pass
#: over every image before the first step, and one more copy of the data on disk.
AUTO_CACHE_LIMIT = 20 * 10**9
#: Image headers read to estimate the decode cache's size.
SIZE_SAMPLES = 32


@dataclass
class Choice:
    stream: bool
    why: str
    source: StreamSource | None = None


def _wanted(recipe: Recipe) -> list[str]:
    cfg = recipe.data
    return [cfg.train_split] + ([cfg.eval_split] if cfg.eval_split and cfg.eval_split != cfg.train_split else [])


def choose(recipe: Recipe, processor, with_eval: bool = True) -> Choice:
    """Stream or decode-cache, and why (one line for the log)."""
    cfg = recipe.data
    if cfg.streaming is False:
        return Choice(False, "data.streaming is false")
    needs = needs_decode_cache(recipe)
    if needs:
        return Choice(False, needs[0])  # true was refused by the recipe checks
    wanted = _wanted(recipe) if with_eval else [cfg.train_split]
    try:
        source = open_stream(cfg, wanted)
        train = source.splits[cfg.train_split]
        if isinstance(train, ShardedSplit) and train.sizes is None:
            check_endless(recipe, train)
    except data.DataError as err:
        if cfg.streaming is True:
            raise
        return Choice(False, f"it cannot be streamed ({err})")
    if cfg.streaming is True:
        return Choice(True, "data.streaming is true", source)
    if isinstance(train, ShardedSplit) and train.sizes is None and train.total_hint is None:
        return Choice(True, f"the size of '{cfg.train_split}' is unknown: its shards do not state it", source)
    estimate = estimate_cache_bytes(source, processor)
    cache_dir = _cache_dir()
    free = shutil.disk_usage(cache_dir).free if os.path.isdir(cache_dir) else math.inf
    size = f"estimated decode cache {_gb(estimate)}"
    if estimate > AUTO_CACHE_LIMIT:
        return Choice(True, f"{size} > the {_gb(AUTO_CACHE_LIMIT)} limit of data.streaming 'auto'", source)
    if estimate > 0.9 * free:
        return Choice(True, f"{size} > 90% of the {_gb(free)} free in {cache_dir}", source)
    return Choice(False, f"{size} <= {_gb(AUTO_CACHE_LIMIT)} and fits in the {_gb(free)} free in {cache_dir}")


def count(split) -> int | str:
    """How many images a split holds, for the log and the card (a stream may not know)."""
    if isinstance(split, ImageStream) and split.total is None:
        return "an unknown number of"
    return len(split)


def decide(recipe: Recipe, processor, state, with_eval: bool = True) -> Choice:
    """:func:`choose` on the main process, followed by every process (the free disk, a
    network error may differ between machines); the others open the same source."""
    if state.num_processes == 1:
        return choose(recipe, processor, with_eval)
    from accelerate.utils import broadcast_object_list

    choice = choose(recipe, processor, with_eval) if state.is_main_process else None
    stream, why = broadcast_object_list([choice.stream if choice else None, choice.why if choice else None])
    if state.is_main_process:
        return choice  # type: ignore[return-value]
    wanted = _wanted(recipe) if with_eval else [recipe.data.train_split]
    return Choice(bool(stream), str(why), open_stream(recipe.data, wanted) if stream else None)


def configure_workers(args, recipe: Recipe) -> None:
    """The loader workers of a streamed run (:func:`loader_workers`), and the training
    process's CPU threads next to them: on a CPU, the cores the workers do not take."""
    import torch

    from finetune.utils import threads

    decision = threads.configure_threads()
    user_set = "dataloader_num_workers" in recipe.training
    args.dataloader_num_workers = loader_workers(args, user_set)
    if decision.applies and decision.why == "cores/processes" and args.use_cpu:
        left = max(1, decision.count - args.dataloader_num_workers)
        torch.set_num_threads(left)
        logger.info(
            "threads: %d CPU thread(s) train, %d loader worker(s) decode (%d cores / %d process(es))",
            left, args.dataloader_num_workers, decision.cores, decision.processes,
        )
    else:
        logger.info("data: %d loader worker(s) decode the streamed images", args.dataloader_num_workers)


def stream_state(prepared: Prepared, recipe: Recipe, args):
    """The Trainer's callback for a streamed run (:class:`finetune.training.stream_state.StreamState`)."""
    from finetune.training.stream_state import BadImages, StreamState

    # None: shards of unknown sizes, whose unreadable share is of the images read so far.
    totals: dict[str, int | None] = {prepared.train.split.name: prepared.train.total}
    if prepared.validation is not None:
        totals[prepared.validation.split.name] = len(prepared.validation)
    if prepared.eval is not None:
        totals[prepared.eval.split.name] = len(prepared.eval)
    return StreamState(prepared.train, BadImages(totals, recipe.data.max_bad_fraction), args.ignore_data_skip)


def check_endless(recipe: Recipe, train: ShardedSplit) -> None:
    """A train split of unknown shard sizes streams without epochs: it needs
    ``training.max_steps``, and no validation piece drawn from it (finding one would
    read all of it at every evaluation, and its size could not be known)."""
    cfg = recipe.data
    if (recipe.training.get("max_steps") or -1) <= 0:
        raise data.DataError(
            f"data.streaming: the shards of '{cfg.train_split}' do not state their sizes, so an epoch cannot be "
            "dealt to the processes; set training.max_steps (training then runs that many steps), or "
            "data.streaming to false (the decode cache counts the images)"
        )
    if cfg.validation_fraction > 0:
        raise data.DataError(
            f"data.validation_fraction: the shards of '{cfg.train_split}' do not state their sizes, so a validation "
            "piece of it would have each evaluation read all of it; set data.validation_fraction to 0 and report "
            "on data.eval_split, or set data.streaming to false"
        )
    if recipe.training.get("save_strategy", "epoch") == "epoch":
        # The Trainer's only "epoch" would be all of training: one checkpoint, at the end.
        raise data.DataError(
            f"training.save_strategy 'epoch': the shards of '{cfg.train_split}' do not state their sizes, so training "
            "has no epochs and would save only at its end; set save_strategy to 'steps' (with save_steps) or 'no'"
        )


def _cache_dir() -> str:
    from datasets import config

    return str(config.HF_DATASETS_CACHE)


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB"


def sample_records(split: ListedSplit | ShardedSplit, n: int) -> list:
    """Up to ``n`` undecoded images spread over a listed split, or the first of a sharded one."""
    if isinstance(split, ListedSplit):
        rows = sorted({int(i) for i in np.linspace(0, len(split) - 1, min(n, len(split)))}) if len(split) else []
        return list(split.read(rows))
    out = []
    for shard in range(len(split.shards)):
        for record in split.read(shard):
            out.append(record)
            if len(out) >= n:
                return out
    return out


def estimate_cache_bytes(source: StreamSource, processor) -> float:
    """What the decode cache of every split would take: each image at the smaller of its own
    size and the model's, 3 bytes a pixel, from a sample of headers."""
    from finetune.utils.images import upright_size

    model = data.output_size(processor)
    pixels = []
    for record in sample_records(source.splits[next(iter(source.splits))], SIZE_SAMPLES):
        try:
            h, w = upright_size(record.value)
        except Exception:  # noqa: BLE001 - an unreadable image is the stream's to report
            continue
        pixels.append(min(h * w, model[0] * model[1]))
    per_image = 3 * (float(np.mean(pixels)) if pixels else model[0] * model[1])
    sizes = [split.total_hint if isinstance(split, ShardedSplit) and split.sizes is None else len(split)
             for split in source.splits.values()]
    return per_image * sum(n or 0 for n in sizes)


def loader_workers(args, user_set: bool) -> int:
    """DataLoader workers for a streamed run: the recipe's ``dataloader_num_workers``, else
    from the cores each process has (its CPU affinity shared by the processes on the
    machine): on a CPU half of them (the other half trains), with an accelerator all but one
    (that one feeds the device), at most 16."""
    if user_set:
        return int(args.dataloader_num_workers)
    from finetune.utils import threads
    from finetune.utils.devices import has_accelerator

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, cpus // threads.local_processes(os.environ))
    if has_accelerator() or not args.use_cpu:
        return max(1, min(cores - 1, 16))
    return max(1, cores // 2)


def prepare_streams(recipe: Recipe, processor, seed: int, source: StreamSource, args, state, why: str) -> Prepared:
    """The streamed train, validation and eval splits of a run, and its data report."""
    cfg = recipe.data
    if cfg.eval_split == cfg.train_split:
        raise data.DataError(
            "data.eval_split names the training split: the reported score would be measured on training images; "
            "name another split, or set it to null to hold out a validation piece"
        )
    train_split = source.splits[cfg.train_split]
    notes = list(source.notes)
    if isinstance(train_split, ShardedSplit) and train_split.sizes is None:
        check_endless(recipe, train_split)
        notes.append(
            f"the shards of '{cfg.train_split}' do not state their sizes: each process reads its own shards round "
            f"after round for training.max_steps steps, without epochs"
        )
    if cfg.eval_split is not None:
        evaluated = source.splits[cfg.eval_split]
        if isinstance(evaluated, ShardedSplit) and evaluated.sizes is None:
            # Every eval image is scored once, which needs each process's share: counted
            # by reading the split once (nothing decoded).
            logger.info("data: counting the images of '%s' (its shards do not state their sizes)", cfg.eval_split)
            source.splits[cfg.eval_split] = evaluated.counted()
    validation = None
    if cfg.validation_fraction > 0:
        if isinstance(train_split, ListedSplit):
            chosen = validation_pieces.listed_validation(train_split, cfg.validation_fraction, seed + 1)
            validation = train_split.subset(np.flatnonzero(chosen), "validation")
            train_split = train_split.subset(np.flatnonzero(~chosen))
            how = "stratified"
        else:
            train_split, validation = validation_pieces.split_sharded(train_split, cfg.validation_fraction, seed + 1)
            how = "approximately stratified: each image's piece is decided by its key alone"
            notes.append(
                "the validation piece is drawn by a hash of each image's key, without reading the labels, so each "
                "class has about its share of it (approximately stratified); each evaluation reads the training "
                "shards to find it"
            )
        if len(validation) == 0:
            raise data.DataError(
                f"data.validation_fraction: {cfg.validation_fraction:g} of {len(train_split)} training images leaves "
                "none for the validation piece; add images, or set data.validation_fraction to 0"
            )
    world, rank = state.num_processes, state.process_index
    lanes = max(1, int(args.dataloader_num_workers))
    size = data.output_size(processor)
    common = {"seed": args.seed, "world": world, "rank": rank, "lanes": lanes}
    train = ImageStream(
        train_split, ImagePipeline(processor, size, cfg.augment, args.seed), batch=args.per_device_train_batch_size,
        train=True, buffer=cfg.shuffle_buffer, drop_last=args.dataloader_drop_last, **common,
    )
    plain = ImagePipeline(processor, size, None, args.seed)
    eval_batch = args.per_device_eval_batch_size
    val_stream = ImageStream(validation, plain, batch=eval_batch, train=False, **common) if validation is not None else None
    if cfg.eval_split is not None:
        eval_stream = ImageStream(source.splits[cfg.eval_split], plain, batch=eval_batch, train=False, **common)
        eval_name = cfg.eval_split
    else:
        eval_stream = val_stream
        eval_name = f"validation piece of '{cfg.train_split}' ({cfg.validation_fraction:g}, seeded, {how})"
    splits = data.Splits(
        train_split, validation, eval_stream.split if eval_stream is not None else None, eval_name,
        source.class_names, source.image_column, source.label_column, notes,
    )
    pieces = {"train": train, "validation": val_stream}
    if eval_stream is not val_stream:
        pieces["eval"] = eval_stream
    report = {
        "dataset": cfg.dataset,
        "input": {"path": "streaming", "why": why, "source": source.kind, "loader_workers": int(args.dataloader_num_workers)},
        "splits": {name: {"images": s.total, "bad": 0} for name, s in pieces.items() if s is not None},
        "bad_files": [],
        "junk_files_ignored": data.count_junk(cfg.dataset),
        "max_bad_fraction": cfg.max_bad_fraction,
        "notes": notes,
    }
    return Prepared(splits, train, val_stream, eval_stream, report)


def preflight(stream: ImageStream, n: int = 8) -> None:
    """Decode the first few images before training: a source whose images all fail (a wrong
    column, files that are not images) stops now with one line, not after the model loads."""
    failures = []
    for record in sample_records(stream.split, n):
        try:
            decode_upright(record.value)
            return
        except Exception as err:  # noqa: BLE001 - reported below
            failures.append(f"{record.key}: {type(err).__name__}: {err}")
    if failures:
        raise data.DataError(
            f"data: none of the first {len(failures)} images of '{stream.split.name}' can be read, e.g. {failures[0]}; "
            "check data.dataset and data.image_column"
        )


class EvalRows:
    """The scored images of a streamed evaluation in the order of its predictions, read
    again on demand (the report's pictures show a few of them)."""

    def __init__(self, stream: ImageStream, kept: np.ndarray | None) -> None:
        positions = np.asarray(stream.positions())
        if kept is not None and len(kept) == len(positions):
            positions = positions[kept]
        self.positions = positions
        self.stream = stream

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.stream.record(int(self.positions[index]))
        pixels = self.stream.pipeline(decode_upright(record.value), record.key, 0, False)
        return {"pixel_values": pixels, "labels": record.label}


def report_bad_images(stream, prepared: Prepared, out, main: bool) -> None:
    """Gather the unreadable images of every process into ``data_report.json``."""
    from accelerate import PartialState

    from finetune.utils.files import write_json

    entries = stream.bad.entries()
    read = [stream.bad.read.get(prepared.train.split.name, 0)]
    if PartialState().num_processes > 1:
        from accelerate.utils import gather_object

        entries = gather_object(entries)
        read = gather_object(read)
    found = {(split, key): reason for split, key, reason in entries}
    pieces = {prepared.train.split.name: "train"}
    for name, piece in (("validation", prepared.validation), ("eval", prepared.eval)):
        if piece is not None:
            pieces.setdefault(piece.split.name, name)
    report = prepared.data_report
    report["bad_files"] = [
        {"path": key, "reason": reason, "split": pieces.get(split, split)} for (split, key), reason in sorted(found.items())
    ]
    for counts in report["splits"].values():
        counts["bad"] = 0
    for item in report["bad_files"]:
        if item["split"] in report["splits"]:
            report["splits"][item["split"]]["bad"] += 1
    if prepared.train.total is None:
        # Shards of unknown sizes: what training read, every process alike.
        report["splits"]["train"]["images_read"] = int(sum(read))
    if main:
        write_json(out / "data_report.json", report)


def crop_loss(prepared: Prepared, recipe: Recipe) -> str | None:
    """One line for the log when the decode cache holds the training images below their own
    size and random crops then scale a small piece of that copy up: what the smallest crop
    has, and what it would have cut from the originals. None when nothing is lost."""
    scale = recipe.data.augment.crop_scale
    if scale is None or recipe.model.caches_features or prepared.train is None:
        return None
    from datasets import Image

    from finetune.utils.images import upright_size

    h, w = data.image_size(prepared.train)
    splits = prepared.splits
    raw = splits.train
    if isinstance(raw.features.get(splits.image_column), Image):
        raw = raw.cast_column(splits.image_column, Image(decode=False))
    rows = sorted({int(i) for i in np.linspace(0, len(raw) - 1, min(SIZE_SAMPLES, len(raw)))}) if len(raw) else []
    sizes = []
    for value in raw.select(rows)[splits.image_column] if rows else []:
        try:
            sizes.append(upright_size(value))
        except Exception:  # noqa: BLE001 - unreadable images are the decode pass's to report
            continue
    if not sizes:
        return None
    oh, ow = (int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes])))
    if oh * ow <= h * w:
        return None
    side = math.sqrt(scale[0])
    return (
        f"training crops (scale {scale[0]:g}-{scale[1]:g}) are cut from the images as cached, {h}×{w}: the smallest "
        f"is {round(h * side)}×{round(w * side)} pixels scaled up to the model's size; cut from the originals (about "
        f"{oh}×{ow}) it would have {round(oh * side)}×{round(ow * side)}; data.streaming true crops from the originals"
    )
