"""One training run: the Trainer (through accelerate) on the prepared data, then the outputs.

recipe → TrainingArguments (``finetune.training.arguments``) → output folder locked and
checked (``finetune.training.output_dir``) → processor → data
(``finetune.training.prepared_data``) → model, prepared for its strategy
(``finetune.models.strategies``), and a frozen teacher to distil from
(``finetune.training.distill``) → Trainer (``finetune.training.trainer``, or the probe's on
cached features) → train (resuming when the same recipe ran here before; stopping cleanly on
SIGTERM or Ctrl-C, ``finetune.training.interrupts``) → final evaluation on the eval split
(``finetune.training.finish``) → model, processor, metrics, recipe.json, report and card in
the output folder. A full disk stops the run with one line saying where and how much.

The recipe is resolved once into a :class:`Run`; each stage takes the run and reads only
its part. ``train_trial`` is a search trial: the same data, model and Trainer, scored on
the validation piece, without the eval split, the output folder's files or a saved model.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, set_seed

from finetune import data
from finetune.data.streaming.stream import ImageStream
from finetune.evaluation import eval_sets, metrics
from finetune.models import classifier as model_lib
from finetune.models import strategies
from finetune.recipe import Recipe, task
from finetune.training import calibrate, distill, lp_ft, streamed_data
from finetune.training.arguments import callbacks, data_seed, precision, training_arguments
from finetune.training.finish import AFTER_TRAINING, finish, stopped_after_training
from finetune.training.interrupts import InterruptCallback, Interrupted, StopNow, signal_name
from finetune.training.output_dir import (
    OutputDirError,
    claim_output_dir,
    disk_full_is_a_user_error,
    what_a_rerun_does,
)
from finetune.training.prepared_data import Prepared, check_prepared, drop_leaked_eval, prepare_data
from finetune.training.run_files import CheckpointFilesCallback, record
from finetune.training.run_state import Run
from finetune.training.shared import SharedWork
from finetune.training.trainer import FinetuneTrainer, trainer_options
from finetune.utils import threads
from finetune.utils.files import write_json

logger = logging.getLogger("finetune")


def _set_find_unused_parameters(run: Run, size) -> None:
    """DDP's ``find_unused_parameters`` from what the strategy really trains (the Trainer's
    default, on, costs an extra pass over the autograd graph every step)."""
    args = run.args
    if args.world_size == 1 or run.strategy.caches_features(run.recipe.model):
        # No DDP to set up; or the feature-cache probe, which trains one Linear layer whose
        # weight and bias both make every logit.
        args.ddp_find_unused_parameters = False
        return
    unused = model_lib.unused_parameters(run.loaded.model, size)
    args.ddp_find_unused_parameters = bool(unused)
    if unused:
        logger.info(
            "DDP: %d trainable tensor(s) get no gradient (%s%s), so it looks for them every step",
            len(unused), ", ".join(unused[:3]), " …" if len(unused) > 3 else "",
        )


def train(
    recipe: Recipe,
    overwrite: bool = False,
    source: str = "recipe",
    *,
    shared: SharedWork | None = None,
    search: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a recipe end to end; returns the final eval metrics. ``shared``: what the earlier
    runs of a study or search computed already; ``search``: the search that chose this
    recipe, for the card."""
    from accelerate import PartialState

    args = training_arguments(recipe, source)
    strategy = strategies.of(recipe.model)
    strategy.check_fits(args)
    state = PartialState()
    out = Path(recipe.output_dir)
    # The main process locks the folder (a second run into it stops at once) and decides
    # what to do with it; the others learn the outcome, so that all stop or go together.
    lock, resume, problem = None, None, None
    if state.is_main_process:
        try:
            lock, resume = claim_output_dir(recipe, overwrite)
        except OutputDirError as err:
            problem = str(err)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        problem, resume = broadcast_object_list([problem, resume])
    if problem is not None:
        raise OutputDirError(problem)
    run = Run(recipe, args, state, out, strategy, resume=resume, shared=shared, search=search)
    try:
        # Anything else that fills a disk (the recipe's own files, the decode cache).
        with disk_full_is_a_user_error(out, main_process=state.is_main_process):
            return _run(run)
    finally:
        if lock is not None:
            lock.release()


def train_trial(recipe: Recipe, trial_callbacks: list[TrainerCallback], shared: SharedWork) -> dict[str, Any]:
    """One trial of a search: train, then the metrics of the validation piece. The eval split
    is never loaded; the output folder is neither locked nor written (the search holds its
    own), no model is saved, and the Trainer prints no logs or bars (the search shows one
    bar over the trials)."""
    from accelerate import PartialState

    args = training_arguments(recipe)
    run = Run(recipe, args, PartialState(), Path(recipe.output_dir), strategies.of(recipe.model),
              shared=shared, for_trial=True)
    trainer = _build(run).trainer
    for callback in trial_callbacks:
        trainer.add_callback(callback)
    for callback in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(callback)
    trainer.train()
    # The last per-epoch evaluation scored the final weights already, unless the best ones
    # were loaded back afterwards (or no loop ran: the L-BFGS head).
    last = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), None)
    if last is not None and last.get("step") == trainer.state.global_step and not args.load_best_model_at_end:
        return last
    return trainer.evaluate()


def _run(run: Run) -> dict[str, Any]:
    if run.main:
        record(run.out, "recipe.json")  # each file into the run's manifest before it is written
        write_json(run.out / "recipe.json", run.recipe.to_dict())
    if run.resume:
        logger.info("resuming from %s (same recipe found in %s)", run.resume, run.out)
    if run.main and run.recipe.hub.push and not run.recipe.hub.private:
        logger.warning(  # now, not hours later when the push says it again: there is time to stop
            "hub: hub.private is false: at its end this run publishes its model, card, metrics, recipe and report "
            "pictures (misclassified.png or worst_images.png show images of the eval split) to %s, where anyone can download them; "
            "stop now and set hub.private: true to keep them private", run.recipe.hub.repo_id,
        )
    # From here on SIGTERM and Ctrl-C stop the run cleanly (in training: at a checkpoint).
    run.interrupts = InterruptCallback(stop_line=lambda signum: _stopped_before_training(run.out, signum))
    try:
        return _train(run)
    finally:
        run.interrupts.restore()


def _train(run: Run) -> dict[str, Any]:
    """Build the run (for LP-FT: its probe phase first), train it (the fine-tune phase), then
    the outputs (``finetune.training.finish``); a signal stops it cleanly, with one line saying
    what is saved."""
    recipe, args, interrupts = run.recipe, run.args, run.interrupts
    try:
        trainer = _build(run).trainer
        if run.lp_record is not None:
            logger.info("LP-FT: fine-tune phase: every parameter trains, starting from the probed head")
        world = args.world_size
        effective = args.per_device_train_batch_size * world * args.gradient_accumulation_steps
        if not (run.strategy.caches_features(recipe.model) and recipe.model.probe_solver == "lbfgs"):
            # (The L-BFGS head has no batches or learning rate.)
            logger.info(
                "training: effective batch %d = %d per device × %d process(es) × %d accumulation step(s); "
                "learning rate %g (not rescaled for the batch size); augmentation %s",
                effective, args.per_device_train_batch_size, world, args.gradient_accumulation_steps,
                args.learning_rate, run.transform.describe(),
            )
        if isinstance(trainer, FinetuneTrainer):
            logger.info("training: regularisers: %s", trainer.describe_regularisers())
        trainer.add_callback(interrupts)
        trainer.add_callback(CheckpointFilesCallback())
        weights, trainable = _parameter_bytes(run.loaded.model)
        # A checkpoint holds what the strategy says (the weights, the head alone, or LoRA's
        # adapters and head) and, for the Adam family, two optimizer tensors per trained weight.
        holds_model = run.strategy.checkpoint_holds(recipe.model) == "model"
        checkpoint = weights + 2 * trainable if holds_model else 3 * trainable
        if run.main:
            record(run.out, *_tracker_folders(run))  # (each checkpoint: CheckpointFilesCallback)
        with disk_full_is_a_user_error(run.out, "a checkpoint", checkpoint, main_process=run.main):
            result = trainer.train(resume_from_checkpoint=run.resume)
    except BaseException:
        # A signal before the first step stops at once (StopNow); a library on the way up
        # may have turned it into an error of its own (a worker pool's timeout), so the
        # callback's record, not the exception, says that it was the signal.
        if interrupts.stopped_early is not None:
            signum = interrupts.stopped_early
            interrupts.end_children()
            raise Interrupted(_stopped_before_training(run.out, signum), signum) from None
        raise
    if run.lp_record is not None:
        result.metrics.update(lp_ft.train_metrics(run.lp_record))
    try:
        # From here on a signal stops the run where it is (StopNow).
        if interrupts.training_over() is not None:
            raise Interrupted(_stopped_in_training(run.out, interrupts.signum, trainer.state), interrupts.signum)
        return finish(run, result)
    except StopNow as stop:
        if interrupts.signum is not None:  # a second signal, while the first one's message was made
            raise Interrupted(_stopped_in_training(run.out, interrupts.signum, trainer.state), stop.signum) from None
        planned = [s for s in AFTER_TRAINING if s != "push" or recipe.hub.push]
        message = stopped_after_training(run.out, stop.signum, trainer.state.global_step, planned, run.done)
        raise Interrupted(message, stop.signum) from None


def _build(run: Run) -> Run:
    """Data, model and Trainer, into ``run``. A search trial (``run.for_trial``): the eval
    split is not prepared, nothing is written, and the decoded splits are kept in
    ``run.shared`` for the next trial."""
    recipe, args, shared = run.recipe, run.args, run.shared
    logger.info("threads: %s", threads.configure_threads().describe())  # again: accelerate may have changed it
    processor = shared.processor(recipe) if shared is not None else model_lib.load_processor(recipe.model, recipe.data.image_size)
    # The teacher's config and processor now (cheap): a wrong name stops before the data pass.
    opened_teacher = distill.open_teacher(recipe.model) if recipe.model.teacher else None
    # A model without a layer map, or without stochastic depth, fails before the data pass.
    if recipe.model.layer_decay is not None or recipe.model.drop_path_rate is not None:
        from finetune.models import drop_path, layer_decay

        config = model_lib.load_config(recipe.model)
        if recipe.model.layer_decay is not None:
            layer_decay.check_supported(config)
        if recipe.model.drop_path_rate is not None:
            drop_path.check_supported(config, recipe.model.drop_path_rate)
    seed = data_seed(recipe)
    # Decoding runs on the main process first; the others then find it in the cache.
    key = SharedWork.data_key(recipe, seed) if run.for_trial and shared is not None else None
    prepared = shared.prepared.get(key) if key is not None else None
    if prepared is None:
        choice = streamed_data.decide(recipe, processor, run.state, with_eval=not run.for_trial)
        logger.info("data: %s (%s)", "streaming" if choice.stream else "decode cache", choice.why)
        if choice.stream:
            streamed_data.configure_workers(args, recipe)
            prepared = streamed_data.prepare_streams(recipe, processor, seed, choice.source, args, run.state, choice.why)
        else:
            with args.main_process_first(desc="data preparation"):
                prepared = prepare_data(recipe, processor, seed, with_eval=not run.for_trial)
            prepared.data_report["input"] = {"path": "decode cache", "why": choice.why}
        if key is not None:
            shared.prepared[key] = prepared
    if run.main and not run.for_trial:
        record(run.out, "data_report.json")
        write_json(run.out / "data_report.json", prepared.data_report)
    streamed = isinstance(prepared.train, ImageStream)
    if streamed:
        streamed_data.preflight(prepared.train)
    else:
        check_prepared(prepared, recipe.data)
        lost = streamed_data.crop_loss(prepared, recipe)
        if lost is not None:
            logger.info("data: %s", lost)
        if recipe.data.leaked_eval == "drop" and not run.for_trial:
            # Before the eval sets and the model: this loads the pretrained backbone by itself.
            prepared = drop_leaked_eval(prepared, recipe, processor, args)
            if run.main:
                write_json(run.out / "data_report.json", prepared.data_report)
    splits = prepared.splits
    # The data says whether the run is multi-label (data.task "auto"): the metrics follow it
    # (a recipe naming metrics of the other kind stops here, before the model loads).
    run.recipe = recipe = task.for_data(recipe, splits.multi_label)
    if recipe.data.eval_sets and not run.for_trial:
        # Before training: a set with a class the model lacks, or unreadable, stops the run now.
        with args.main_process_first(desc="eval sets"):
            prepared.eval_sets = eval_sets.prepare(
                recipe.data.eval_sets, splits.class_names, processor,
                recipe.data.preprocessing_num_workers, recipe.data.max_bad_fraction, run=recipe.output_dir,
                multi_label=splits.multi_label,
            )
    _log_data(prepared)
    run.prepared = prepared

    # The new head's random init must not depend on what drew random numbers before (the
    # data pass, a launcher's setup): seed right before the model is made, as the Trainer
    # does for model_init, so 1 and N processes start from the same head.
    set_seed(args.seed)
    if shared is not None:
        loaded = shared.model(recipe, splits.class_names, processor, args.seed, multi_label=splits.multi_label)
    else:
        loaded = model_lib.load_model(recipe.model, splits.class_names, processor, multi_label=splits.multi_label)
    run.loaded = loaded
    logger.info(loaded.describe(recipe.model))
    if recipe.model.drop_path_rate is not None:
        from finetune.models import drop_path

        logger.info(drop_path.describe(loaded.model, recipe.model.drop_path_rate))
    teacher = None
    if opened_teacher is not None:  # its classes are checked against the data's before its weights load
        teacher = distill.load_teacher(recipe.model, splits.class_names, processor, opened_teacher,
                                       multi_label=splits.multi_label)
        logger.info(teacher.describe())
    # Channels-last for convolutional models on GPUs and CPUs; attention is transformers'
    # default for the model (SDPA where the model has it).
    channels_last = model_lib.use_channels_last(loaded.model, recipe.model, args)
    if channels_last:
        loaded.model.to(memory_format=torch.channels_last)
        if teacher is not None and model_lib.is_convolutional(teacher.model):
            teacher.model.to(memory_format=torch.channels_last)
    has_attention = any("Attention" in type(m).__name__ for m in loaded.model.modules())
    logger.info(
        "model: memory format %s%s; %s",
        "channels-last" if channels_last else "default (contiguous)",
        f"; attention {loaded.model.config._attn_implementation}" if has_attention else "",
        precision(args),
    )
    # The processor's normalisation and output size, and its resize for splits that decode
    # kept below the model's input size (finetune.data.decode).
    transform = data.BatchTransform.for_processor(processor, recipe.data.augment, channels_last=channels_last)
    size = transform.size
    run.accumulator = metrics.MetricAccumulator(recipe.metrics, len(splits.class_names), multi_label=splits.multi_label)
    if not run.for_trial:
        # Before training: a run that asks for calibration where it cannot work stops now.
        run.calibration = calibrate.plan(run, size)
    trainer_class: Callable[..., Trainer] = functools.partial(FinetuneTrainer, layer_decay=recipe.model.layer_decay)
    caches = run.strategy.caches_features(recipe.model)
    if caches:
        # The frozen backbone runs once; the head trains on cached features.
        from finetune.probe import head as probe

        trainer_class, transform = probe.probe_setup(
            loaded, transform, prepared.data_report, None if run.for_trial else run.out / "data_report.json",
            recipe.model, recipe.training, shared=shared, scope=SharedWork.feature_scope(recipe),
        )
    run.transform = transform
    stream = None
    if streamed:
        # The loader workers crop, flip and apply the policy; the device normalises,
        # erases and mixes. The stream resumes itself: the Trainer must not skip batches.
        stream = streamed_data.stream_state(prepared, recipe, args)
        transform = transform.for_stream()
        run.transform = transform
        args.ignore_data_skip = True
    if run.strategy.probe_first:
        # Before the fine-tune's Trainer exists: its set_seed then leaves the random state
        # the same whether the probe was fitted now or loaded from an earlier attempt.
        solving = run.interrupts.recording if run.interrupts is not None else nullcontext
        run.lp_record = lp_ft.probe_phase(recipe, loaded, transform, prepared, run.out, run.state, solving)
        if run.interrupts is not None and run.interrupts.requested:
            raise Interrupted(lp_ft.stopped_after_probe(run.out, run.interrupts.signum), run.interrupts.signum)
    if "ddp_find_unused_parameters" not in recipe.training:
        _set_find_unused_parameters(run, size)
    run.trainer = trainer_class(
        model=loaded.model,
        args=args,
        # A decoded batch is one gather from the memory-mapped cache (data.FastRows).
        train_dataset=data.FastRows.wrap(prepared.train),
        eval_dataset=data.FastRows.wrap(prepared.validation),
        processing_class=processor,
        data_collator=data.collate,
        compute_metrics=run.accumulator,
        batch_transform=transform,
        callbacks=callbacks(recipe),
        # A teacher never comes with cached features (the recipe checks refuse the pair).
        **({"teacher": teacher} if teacher is not None else {}),
        **({"stream": stream} if stream is not None else {}),
        # Class weights, the balanced sampler and the EMA (the recipe checks refuse them with the probe).
        **({} if caches else trainer_options(recipe)),
    )
    return run


def _log_data(prepared: Prepared) -> None:
    splits = prepared.splits
    bad = prepared.data_report["bad_files"]
    logger.info(
        "data: %s train, %s validation, %s eval images [%s], %d classes; %d unreadable file(s) set aside%s; "
        "%d junk file(s) ignored",
        streamed_data.count(prepared.train),
        streamed_data.count(prepared.validation) if prepared.validation is not None else "no",
        streamed_data.count(prepared.eval) if prepared.eval is not None else "no",
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


def _tracker_folders(run: Run) -> list[str]:
    """The folder TensorBoard writes its curves to (transformers' callback: the environment's
    ``TENSORBOARD_LOGGING_DIR``, else ``runs/`` in the output folder), when that is inside the
    output folder."""
    if "tensorboard" not in (run.args.report_to or []):
        return []
    folder = os.path.expanduser(os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(run.out, "runs"))
    rel = Path(os.path.relpath(os.path.abspath(folder), os.path.abspath(run.out)))
    return [] if rel.parts[0] in ("..", ".") else [rel.parts[0]]


def _parameter_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of all parameters, bytes of the trained ones)."""
    sizes = [(p.numel() * p.element_size(), p.requires_grad) for p in model.parameters()]
    return sum(n for n, _ in sizes), sum(n for n, trained in sizes if trained)


def _stopped_before_training(out: Path, signum: int) -> str:
    return (
        f"stopped by {signal_name(signum)} before training started (nothing to checkpoint yet); run the same "
        f"command again to continue: {what_a_rerun_does(out)}; the images decoded so far stay in the decode cache"
    )


def _stopped_in_training(out: Path, signum: int, trainer_state) -> str:
    return (
        f"stopped by {signal_name(signum)} at step {trainer_state.global_step} of {trainer_state.max_steps}; "
        f"run the same command again to continue: {what_a_rerun_does(out, trainer_state.max_steps)}"
    )


