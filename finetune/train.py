"""Train: the HF Trainer (through accelerate) on the prepared data, then the outputs.

recipe → TrainingArguments → output folder check → processor → data → model → Trainer →
train (resuming when the same recipe ran here before) → final evaluation on the eval
split → model, processor, metrics, recipe.json, report and card in the output folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from . import card, data, metrics, model as model_lib, plots
from .recipe import Recipe, RecipeError
from .util import first_line, follow_umask, write_json

logger = logging.getLogger("finetune")

#: What a run writes before training starts; a folder holding only these has nothing to lose.
_BEFORE_TRAINING = {"recipe.json", "data_report.json", "recipe.json.tmp", "data_report.json.tmp"}


class OutputDirError(RuntimeError):
    """The output folder holds something that this run must not overwrite."""


# ------------------------------------------------------------------ training arguments


def data_seed(recipe: Recipe) -> int:
    """The seed of every split and subset: training.data_seed, else training.seed, else 42."""
    t = recipe.training
    return int(t.get("data_seed") if t.get("data_seed") is not None else t.get("seed", 42))


def training_arguments(recipe: Recipe, source: str = "recipe") -> TrainingArguments:
    """TrainingArguments from the recipe's ``training`` block over finetune's defaults."""
    has_validation = recipe.data.validation_fraction > 0
    on_gpu = torch.cuda.is_available()
    accelerator = on_gpu or torch.backends.mps.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    defaults: dict[str, Any] = {
        # Without an accelerator, say so: under a multi-process launcher accelerate then
        # joins the ranks with gloo instead of running N independent single-process jobs.
        "use_cpu": not accelerator,
        # Per-epoch scores on the validation piece (never on the eval split): see data/splits.py.
        "eval_strategy": "epoch" if has_validation else "no",
        "save_strategy": "epoch",
        "logging_strategy": "steps",
        "logging_steps": 10,
        "save_total_limit": 2,
        "report_to": "none",
        "seed": 42,
        # bf16 autocast on GPUs that have it: the usual 2× for free (issue #6).
        "bf16": bool(on_gpu and torch.cuda.is_bf16_supported()),
        "tf32": bool(on_gpu and torch.cuda.get_device_capability()[0] >= 8),
        # Workers only read uint8 rows of the decoded cache; on CPU they would compete
        # with the model for the same cores.
        "dataloader_num_workers": min(4, (os.cpu_count() or 2) // 2) if on_gpu else 0,
    }
    user = dict(recipe.training)
    if "per_device_train_batch_size" in user and "per_device_eval_batch_size" not in user:
        defaults["per_device_eval_batch_size"] = user["per_device_train_batch_size"]
    if not has_validation and user.get("eval_strategy", "no") != "no":
        raise RecipeError(
            f"{source}: 'training.eval_strategy' is '{user['eval_strategy']}' but there is no validation piece "
            "(data.validation_fraction is 0); set data.validation_fraction > 0 or eval_strategy to 'no'"
        )
    forced = {
        "output_dir": recipe.output_dir,
        # Our columns are exactly the model's inputs; nothing may be dropped.
        "remove_unused_columns": False,
        "label_names": ["labels"],
        # Accumulate metrics batch by batch instead of keeping every eval logit.
        "batch_eval_metrics": True,
    }
    try:
        return TrainingArguments(**{**defaults, **user, **forced})
    except (ValueError, TypeError) as err:
        first = first_line(err)
        raise RecipeError(f"{source}: 'training' is inconsistent: {first}") from None


# --------------------------------------------------------------------- output folder


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [f"{prefix}: {json.dumps(a)} → {json.dumps(b)}"]


def _comparable(recipe_dict: dict[str, Any]) -> dict[str, Any]:
    # Publishing settings do not change what is trained, and a run folder may be moved.
    return {k: v for k, v in recipe_dict.items() if k not in ("hub", "output_dir")}


def check_output_dir(recipe: Recipe, overwrite: bool) -> str | None:
    """Decide what to do with the output folder; returns the checkpoint to resume from.

    - empty or missing: a fresh run;
    - holds a run of the same recipe: resume from its last complete checkpoint;
    - holds a different recipe or files that are not ours: stop, naming the differences,
      unless ``--overwrite`` (then old checkpoints are removed and a fresh run starts).
    """
    out = Path(recipe.output_dir)
    if not out.exists():
        return None
    if not out.is_dir():
        raise OutputDirError(f"output_dir: '{out}' is a file; name a folder")
    entries = [p for p in out.iterdir()]
    if {p.name for p in entries} <= _BEFORE_TRAINING:
        return None  # an earlier attempt stopped before training: nothing to keep
    previous = out / "recipe.json"
    if overwrite:
        for ckpt in out.glob("checkpoint-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
        return None
    if not previous.is_file():
        foreign = sorted(p.name for p in entries)[:5]
        raise OutputDirError(
            f"output_dir: '{out}' already holds files that are not a finetune run ({', '.join(foreign)}); "
            "choose another output_dir (--set output_dir=...) or pass --overwrite"
        )
    try:
        old = json.loads(previous.read_text())
    except (OSError, json.JSONDecodeError):
        raise OutputDirError(
            f"output_dir: '{previous}' is unreadable; choose another output_dir or pass --overwrite"
        ) from None
    differences = _diff(_comparable(old), _comparable(recipe.to_dict()))
    if differences:
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise OutputDirError(
            f"output_dir: '{out}' holds a run of a different recipe ({shown}); "
            "choose another output_dir (--set output_dir=...) or pass --overwrite to replace it"
        )
    return last_complete_checkpoint(out)


def _checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _safetensors_complete(path: Path) -> bool:
    """The header parses and the file is as long as the header says (not cut off)."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + size + end
    except (OSError, ValueError, KeyError, TypeError):
        return False


def checkpoint_is_complete(path: Path) -> bool:
    """The Trainer writes weights, optimizer, RNG state, then ``trainer_state.json``: a
    checkpoint is complete when that last file parses and names this step, and every
    weights file is whole."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    weights = list(path.glob("*.safetensors"))
    return (
        state.get("global_step") == _checkpoint_step(path)
        and bool(weights)
        and all(_safetensors_complete(w) for w in weights)
    )


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest checkpoint that is whole; ones cut off mid-write are skipped (and said)."""
    for path in sorted(out.glob("checkpoint-*"), key=_checkpoint_step, reverse=True):
        if not path.is_dir() or _checkpoint_step(path) < 0:
            continue
        if checkpoint_is_complete(path):
            return str(path)
        logger.warning("skipping %s: it was cut off mid-write", path)
    return None


# --------------------------------------------------------------------------- trainer


class Preempted(RuntimeError):
    """SIGTERM arrived: a checkpoint was written and training stopped; re-run to continue."""


class PreemptionCallback(TrainerCallback):
    """On SIGTERM (cluster pre-emption), save a checkpoint at the end of the current step
    and stop. All ranks agree on the step (a MAX all-reduce of the flag), so no process
    waits in a collective that the others have left. A second SIGTERM exits at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: the user means it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _agreed(self) -> bool:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
            device = "cuda" if backend == "nccl" else "cpu"
            flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            return bool(flag.item())
        return self.requested

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed():
            self.requested = True
            control.should_save = True
            control.should_training_stop = True
        return control


class FollowUmaskCallback(TrainerCallback):
    """Each checkpoint's weights get the mode any new file gets (util.follow_umask:
    safetensors leaves them readable by their owner only)."""

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            follow_umask(Path(args.output_dir))


class FinetuneTrainer(Trainer):
    """The HF Trainer, with batches turned from uint8 to normalised (and, in training,
    augmented) floats on the training device just before the forward pass."""

    def __init__(self, *args: Any, batch_transform: data.BatchTransform, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_transform = batch_transform
        # Image classifiers take **kwargs in forward(), so the Trainer assumes they divide
        # their loss by `num_items_in_batch` and multiplies it by the number of processes;
        # but their loss is a plain batch mean, so N processes would train with N× the
        # gradient (N× the learning rate under SGD). Their loss needs no such correction.
        self.model_accepts_loss_kwargs = False

    def _get_dataloader(self, dataset, *args: Any, **kwargs: Any):
        # Issue #6: a decoded batch is one gather from the memory-mapped cache (data.FastRows).
        return super()._get_dataloader(data.FastRows.wrap(dataset), *args, **kwargs)

    # transformers 5 writes checkpoints with a model's legacy key names (ViT's
    # "attention.attention.key", ...) but reads them back for resume and for
    # load_best_model_at_end with a plain load_state_dict(strict=False), which silently
    # skips every renamed tensor: training would go on from the base model's weights.
    # from_pretrained applies the key conversion; copying its tensors with strict=True makes
    # any mismatch an error instead. (FSDP / DeepSpeed keep the Trainer's own loaders.)
    def _reload_weights(self, checkpoint: str) -> None:
        model = self.accelerator.unwrap_model(self.model)
        fresh = type(model).from_pretrained(checkpoint, config=model.config)
        model.load_state_dict(fresh.state_dict(), strict=True)
        logger.info("loaded weights from %s", checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or model is not None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._reload_weights(resume_from_checkpoint)

    def _load_best_model(self):
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_best_model()
        logger.info("loading the best model by validation score (step %s)", self.state.best_global_step)
        self._reload_weights(self.state.best_model_checkpoint)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        seed = None
        if model.training:
            # One seed per (run seed, optimizer step, micro-batch, rank): augmentation is a
            # pure function of where training is, so resuming mid-epoch (after SIGTERM) draws
            # the same crops as a run that never stopped (issue #5).
            step = self.state.global_step
            self._micro = self._micro + 1 if getattr(self, "_micro_step", None) == step else 0
            self._micro_step = step
            seed = ((self.args.seed * 1_000_003 + step) * 1_009 + self._micro) * 101 + self.args.process_index
        inputs["pixel_values"] = self.batch_transform(inputs["pixel_values"], train=model.training, seed=seed)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


@dataclass
class Prepared:
    splits: data.Splits
    train: Any
    validation: Any | None
    eval: Any
    data_report: dict[str, Any]


def prepare_data(recipe: Recipe, processor, seed: int) -> Prepared:
    cfg = recipe.data
    raw = data.load_raw(cfg)
    splits = data.make_splits(raw, cfg, seed)
    workers = cfg.preprocessing_num_workers
    # Issue #6: a split that is randomly cropped every step is stored channels-last, the
    # layout torch's uint8 resize works in (data.decode); the others as the model takes them.
    crops = cfg.augment.crop_scale is not None and not recipe.model.caches_features
    decoded = {
        "train": data.decode(
            splits.train, processor, splits.image_column, splits.label_column, workers, "decoding train", channels_last=crops
        ),
    }
    if splits.validation is not None:
        decoded["validation"] = data.decode(
            splits.validation, processor, splits.image_column, splits.label_column, workers, "decoding validation"
        )
    if splits.eval is splits.validation and "validation" in decoded:
        decoded["eval"] = decoded["validation"]
    else:
        decoded["eval"] = data.decode(
            splits.eval, processor, splits.image_column, splits.label_column, workers, "decoding eval"
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
    return Prepared(splits, decoded["train"].dataset, validation, decoded["eval"].dataset, report)


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
    names = prepared.splits.class_names
    train_counts = torch.bincount(torch.as_tensor(prepared.train["labels"][:]), minlength=len(names))
    empty = [names[i] for i in torch.nonzero(train_counts == 0).flatten().tolist()]
    if empty:
        raise data.DataError(
            f"data: after setting aside unreadable files, class(es) {', '.join(empty)} have no training images; "
            "see data_report.json"
        )


def train(recipe: Recipe, overwrite: bool = False, source: str = "recipe") -> dict[str, Any]:
    """Run a recipe end to end; returns the final eval metrics."""
    from accelerate import PartialState

    args = training_arguments(recipe, source)
    state = PartialState()
    out = Path(recipe.output_dir)
    resume = check_output_dir(recipe, overwrite)
    state.wait_for_everyone()  # every rank has looked at the folder before rank 0 writes to it
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "recipe.json", recipe.to_dict())
    if resume:
        logger.info("resuming from %s (same recipe found in %s)", resume, out)

    processor = model_lib.load_processor(recipe.model, recipe.data.image_size)
    seed = data_seed(recipe)
    # Decoding runs on the main process first; the others then find it in the cache.
    with args.main_process_first(desc="data preparation"):
        prepared = prepare_data(recipe, processor, seed)
    if state.is_main_process:
        write_json(out / "data_report.json", prepared.data_report)
    check_prepared(prepared, recipe.data)
    splits = prepared.splits
    bad = prepared.data_report["bad_files"]
    logger.info(
        "data: %d train, %s validation, %d eval images [%s], %d classes; %d unreadable file(s) set aside%s; "
        "%d junk file(s) ignored",
        len(prepared.train),
        len(prepared.validation) if prepared.validation is not None else "no",
        len(prepared.eval),
        splits.eval_name,
        len(splits.class_names),
        len(bad),
        " (listed in data_report.json)" if bad else "",
        prepared.data_report["junk_files_ignored"],
    )
    for item in bad[:20]:
        logger.warning("data: set aside %s (%s)", item["path"], item["reason"])
    for note in splits.notes:
        logger.warning("data: %s", note)

    # The new head's random init must not depend on what drew random numbers before (the
    # data pass, a launcher's setup): seed right before the model is made, as the Trainer
    # does for model_init, so 1 and N processes start from the same head.
    set_seed(args.seed)
    loaded = model_lib.load_model(recipe.model, splits.class_names, processor)
    logger.info(model_lib.describe_strategy(loaded, recipe.model))
    augment = recipe.data.augment
    # Channels-last for convolutional models on GPUs; attention is transformers' default for
    # the model (SDPA where the model has it).
    channels_last = model_lib.use_channels_last(loaded.model, recipe.model, args)
    if channels_last:
        loaded.model.to(memory_format=torch.channels_last)
    has_attention = any("Attention" in type(m).__name__ for m in loaded.model.modules())
    logger.info(
        "model: memory format %s%s",
        "channels-last" if channels_last else "default (contiguous)",
        f"; attention {loaded.model.config._attn_implementation}" if has_attention else "",
    )
    # The processor's normalisation and output size, and its resize for splits that decode
    # kept below the model's input size (data.decode).
    transform = data.BatchTransform.for_processor(processor, augment, channels_last=channels_last)
    size = transform.size
    accumulator = metrics.MetricAccumulator(recipe.metrics, len(splits.class_names))
    trainer_class: Callable[..., Trainer] = FinetuneTrainer
    if recipe.model.caches_features:
        # Issue #6: the frozen backbone runs once; the head trains on cached features.
        from . import features

        trainer_class, transform = features.probe_setup(
            loaded, transform, prepared.data_report, out / "data_report.json", recipe.model, recipe.training
        )
    trainer = trainer_class(
        model=loaded.model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.validation,
        processing_class=processor,
        data_collator=data.collate,
        compute_metrics=accumulator,
        batch_transform=transform,
    )
    world = args.world_size
    effective = args.per_device_train_batch_size * world * args.gradient_accumulation_steps
    if recipe.model.probe_solver != "lbfgs":  # an L-BFGS head has no batches or learning rate (features.py)
        logger.info(
            "training: effective batch %d = %d per device × %d process(es) × %d accumulation step(s); "
            "learning rate %g (not rescaled for the batch size); augmentation %s",
            effective, args.per_device_train_batch_size, world, args.gradient_accumulation_steps,
            args.learning_rate, transform.describe(),
        )
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    trainer.add_callback(FollowUmaskCallback())
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        preemption.restore()
    if preemption.requested:
        raise Preempted(
            f"stopped by SIGTERM at step {trainer.state.global_step}; a checkpoint is in {out}; "
            "run the same command again to continue"
        )
    trainer.save_model()
    if trainer.args.should_save:
        follow_umask(out)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()

    # The reported numbers: the eval split, once, after training (and after loading the
    # best checkpoint by validation score when the recipe asks for it).
    final = trainer.evaluate(eval_dataset=prepared.eval, metric_key_prefix="eval")
    trainer.log_metrics("eval", final)
    trainer.save_metrics("eval", final)
    if trainer.is_world_process_zero():
        predictions = accumulator.last
        report = metrics.per_class_report(predictions, splits.class_names) if predictions is not None else None
        if report is not None:
            report["split"] = splits.eval_name
            write_json(out / "eval_report.json", report)
            plots.write_plots(out, predictions, splits.class_names, prepared.eval, trainer.state.log_history)
        card.write_card(
            out,
            recipe=recipe,
            eval_metrics=final,
            train_metrics=result.metrics,
            eval_name=splits.eval_name,
            class_names=splits.class_names,
            num_train=len(prepared.train),
            num_validation=len(prepared.validation) if prepared.validation is not None else 0,
            report=report,
            loaded=loaded,
            image_size=int(size[0]),
            # What really ran: a linear probe on cached features applies no augmentation.
            augmentation=transform.describe(),
        )
    push_error = None
    if recipe.hub.push and trainer.is_world_process_zero():
        from . import hub

        try:
            url = hub.push(out, recipe.hub.repo_id, private=recipe.hub.private, revision=recipe.hub.revision)
            logger.info("pushed to %s", url)
        except hub.PushError as err:  # the trained run is saved; only the upload failed
            push_error = err
    state.wait_for_everyone()
    if push_error is not None:
        raise push_error
    return final
