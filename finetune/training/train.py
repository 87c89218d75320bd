"""Train: the HF Trainer (through accelerate) on the prepared data, then the outputs.

recipe → TrainingArguments (args.py) → output folder locked and checked (outputs.py) →
processor → data (prepare.py) → model (and a frozen teacher to distil from, distill.py) → Trainer (trainer.py) → train (resuming when the same recipe ran
here before; stopping cleanly on SIGTERM or Ctrl-C, interrupts.py) → final evaluation on the
eval split → model, processor, metrics, recipe.json, report and card in the output folder.
A full disk stops the run with one line saying where and how much (outputs.py).

``train_trial`` is a search trial (search.py): the same data, model and Trainer, scored on
the validation piece, without the eval split, the output folder's files or a saved model.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, set_seed

from finetune import data
from finetune.evaluation import eval_sets, metrics, plots
from finetune.models import classifier as model_lib
from finetune.models import lora
from finetune.publish import card
from finetune.recipe import Recipe
from finetune.training import distill, lp_ft
from finetune.training.arguments import callbacks, data_seed, precision, training_arguments
from finetune.training.interrupts import InterruptCallback, Interrupted, StopNow, signal_name
from finetune.training.output_dir import (
    FollowUmaskCallback,
    OutputDirError,
    claim_output_dir,
    disk_full_is_a_user_error,
    what_a_rerun_does,
)
from finetune.training.prepare import Prepared, check_prepared, drop_leaked_eval, prepare_data
from finetune.training.shared import Reuse
from finetune.training.trainer import FinetuneTrainer, trainer_options
from finetune.utils import threads
from finetune.utils.files import follow_umask, save_metrics, write_json

logger = logging.getLogger("finetune")


def _set_find_unused_parameters(args, model, size, caches_features: bool) -> None:
    """DDP's ``find_unused_parameters`` from what the strategy really trains (the Trainer's
    default, on, costs an extra pass over the autograd graph every step)."""
    if args.world_size == 1 or caches_features:
        # No DDP to set up; or the feature-cache probe, which trains one Linear layer whose
        # weight and bias both make every logit.
        args.ddp_find_unused_parameters = False
        return
    unused = model_lib.unused_parameters(model, size)
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
    reuse: Reuse | None = None,
    search: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a recipe end to end; returns the final eval metrics. ``reuse``: what a search's
    trials computed already; ``search``: the search that chose this recipe, for the card."""
    from accelerate import PartialState

    args = training_arguments(recipe, source)
    model_lib.check_strategy_fits(recipe.model, args)
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
    try:
        # Anything else that fills a disk (the recipe's own files, the decode cache).
        with disk_full_is_a_user_error(out, main_process=state.is_main_process):
            return _run(recipe, args, state, out, resume, reuse, search)
    finally:
        if lock is not None:
            lock.release()


def train_trial(recipe: Recipe, callbacks: list[TrainerCallback], reuse: Reuse) -> dict[str, Any]:
    """One trial of a search: train, then the metrics of the validation piece. The eval split
    is never loaded; the output folder is neither locked nor written (the search holds its
    own), no model is saved, and the Trainer prints no logs or bars (the search shows one
    bar over the trials)."""
    from accelerate import PartialState

    args = training_arguments(recipe)
    trainer = _build(recipe, args, PartialState(), Path(recipe.output_dir), reuse, for_trial=True).trainer
    for callback in callbacks:
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


@dataclass
class _Built:
    """A run up to its first training step: data, model, transform, metrics and Trainer."""

    prepared: Prepared
    loaded: Any
    transform: Any
    accumulator: Any
    trainer: Trainer
    #: LP-FT's probe phase (lp_ft.py), or None.
    lp_record: dict[str, Any] | None = None


def _run(recipe: Recipe, args, state, out: Path, resume: str | None, reuse: Reuse | None, search) -> dict[str, Any]:
    if state.is_main_process:
        write_json(out / "recipe.json", recipe.to_dict())
    if resume:
        logger.info("resuming from %s (same recipe found in %s)", resume, out)
    # From here on SIGTERM and Ctrl-C stop the run cleanly (in training: at a checkpoint).
    interrupts = InterruptCallback()
    try:
        return _train(recipe, args, state, out, resume, reuse, search, interrupts)
    finally:
        interrupts.restore()


def _train(recipe: Recipe, args, state, out: Path, resume, reuse, search, interrupts: InterruptCallback) -> dict[str, Any]:
    """Build the run (for lp_ft: its probe phase first), train it (the fine-tune phase), then
    the outputs (``_finish``); a signal stops it cleanly, with one line saying what is saved."""
    built = _build(recipe, args, state, out, reuse, interrupts=interrupts)
    prepared, loaded, transform, accumulator, trainer, lp_record = (
        built.prepared, built.loaded, built.transform, built.accumulator, built.trainer, built.lp_record
    )
    if lp_record is not None:
        logger.info("LP-FT: fine-tune phase: every parameter trains, starting from the probed head")
    world = args.world_size
    effective = args.per_device_train_batch_size * world * args.gradient_accumulation_steps
    if not (recipe.model.caches_features and recipe.model.probe_solver == "lbfgs"):  # no batches or learning rate (probe.py)
        logger.info(
            "training: effective batch %d = %d per device × %d process(es) × %d accumulation step(s); "
            "learning rate %g (not rescaled for the batch size); augmentation %s",
            effective, args.per_device_train_batch_size, world, args.gradient_accumulation_steps,
            args.learning_rate, transform.describe(),
        )
    if isinstance(trainer, FinetuneTrainer):
        logger.info("training: regularisers: %s", trainer.describe_regularisers())
    trainer.add_callback(interrupts)
    trainer.add_callback(FollowUmaskCallback())
    weights, trainable = _parameter_bytes(loaded.model)
    # A checkpoint holds the weights (a linear probe's: the head alone; lora's: the adapters
    # and the head) and, for the Adam family, two optimizer tensors per trained weight.
    trained_alone = recipe.model.caches_features or recipe.model.strategy == "lora"
    checkpoint = 3 * trainable if trained_alone else weights + 2 * trainable
    with disk_full_is_a_user_error(out, "a checkpoint", checkpoint, main_process=state.is_main_process):
        result = trainer.train(resume_from_checkpoint=resume)
    if lp_record is not None:
        result.metrics.update(lp_ft.train_metrics(lp_record))
    done: list[str] = []  # what _finish has done, for the message if a signal stops it
    try:
        # From here on a signal stops the run where it is (StopNow).
        if interrupts.training_over() is not None:
            raise Interrupted(_stopped_in_training(out, interrupts.signum, trainer.state), interrupts.signum)
        return _finish(recipe, state, trainer, out, prepared, loaded, accumulator, transform, result, done, search, lp_record)
    except StopNow as stop:
        if interrupts.signum is not None:  # a second signal, while the first one's message was made
            raise Interrupted(_stopped_in_training(out, interrupts.signum, trainer.state), stop.signum) from None
        planned = [s for s in _AFTER_TRAINING if s != "push" or recipe.hub.push]
        message = _stopped_after_training(out, stop.signum, trainer.state.global_step, planned, done)
        raise Interrupted(message, stop.signum) from None


def _build(
    recipe: Recipe, args, state, out: Path, reuse: Reuse | None, for_trial: bool = False,
    interrupts: InterruptCallback | None = None,
) -> _Built:
    """Data, model and Trainer. ``for_trial``: the eval split is not prepared, nothing is
    written, and the decoded splits are kept in ``reuse`` for the next trial."""
    logger.info("threads: %s", threads.configure_threads().describe())  # again: accelerate may have changed it
    if reuse is not None:
        processor = reuse.processor(recipe)
    else:
        processor = model_lib.load_processor(recipe.model, recipe.data.image_size)
    # The teacher's config and processor now (cheap): a wrong name stops before the data pass.
    opened_teacher = distill.open_teacher(recipe.model) if recipe.model.teacher else None
    if recipe.model.layer_decay is not None:  # a model without a layer map fails before the data pass
        from finetune.models import layer_decay

        layer_decay.check_supported(model_lib.load_config(recipe.model))
    seed = data_seed(recipe)
    # Decoding runs on the main process first; the others then find it in the cache.
    key = Reuse.data_key(recipe, seed) if for_trial and reuse is not None else None
    prepared = reuse.prepared.get(key) if key is not None else None
    if prepared is None:
        with args.main_process_first(desc="data preparation"):
            prepared = prepare_data(recipe, processor, seed, with_eval=not for_trial)
        if key is not None:
            reuse.prepared[key] = prepared
    if state.is_main_process and not for_trial:
        write_json(out / "data_report.json", prepared.data_report)
    check_prepared(prepared, recipe.data)
    if recipe.data.leaked_eval == "drop" and not for_trial:
        # Before the eval sets and the model: this loads the pretrained backbone by itself.
        prepared = drop_leaked_eval(prepared, recipe, processor, args)
        if state.is_main_process:
            write_json(out / "data_report.json", prepared.data_report)
    splits = prepared.splits
    if recipe.data.eval_sets and not for_trial:
        # Before training: a set with a class the model lacks, or unreadable, stops the run now.
        with args.main_process_first(desc="eval sets"):
            prepared.eval_sets = eval_sets.prepare(
                recipe.data.eval_sets, splits.class_names, processor,
                recipe.data.preprocessing_num_workers, recipe.data.max_bad_fraction,
            )
    bad = prepared.data_report["bad_files"]
    logger.info(
        "data: %d train, %s validation, %s eval images [%s], %d classes; %d unreadable file(s) set aside%s; "
        "%d junk file(s) ignored",
        len(prepared.train),
        len(prepared.validation) if prepared.validation is not None else "no",
        len(prepared.eval) if prepared.eval is not None else "no",
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
    if reuse is not None:
        loaded = reuse.model(recipe, splits.class_names, processor, args.seed)
    else:
        loaded = model_lib.load_model(recipe.model, splits.class_names, processor)
    logger.info(model_lib.describe_strategy(loaded, recipe.model))
    teacher = None
    if opened_teacher is not None:  # its classes are checked against the data's before its weights load
        teacher = distill.load_teacher(recipe.model, splits.class_names, processor, opened_teacher)
        logger.info(teacher.describe())
    augment = recipe.data.augment
    # Channels-last for convolutional models on GPUs; attention is transformers' default
    # for the model (SDPA where the model has it).
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
    # kept below the model's input size (data.decode).
    transform = data.BatchTransform.for_processor(processor, augment, channels_last=channels_last)
    size = transform.size
    accumulator = metrics.MetricAccumulator(recipe.metrics, len(splits.class_names))
    trainer_class: Callable[..., Trainer] = functools.partial(FinetuneTrainer, layer_decay=recipe.model.layer_decay)
    if recipe.model.caches_features:
        # The frozen backbone runs once; the head trains on cached features.
        from finetune.probe import head as probe

        trainer_class, transform = probe.probe_setup(
            loaded, transform, prepared.data_report, None if for_trial else out / "data_report.json",
            recipe.model, recipe.training,
        )
    lp_record = None
    if recipe.model.strategy == "lp_ft":
        # Before the fine-tune's Trainer exists: its set_seed then leaves the random state
        # the same whether the probe was fitted now or loaded from an earlier attempt.
        lp_record = lp_ft.probe_phase(recipe, loaded, transform, prepared, out, state)
        if interrupts is not None and interrupts.requested:
            raise Interrupted(lp_ft.stopped_after_probe(out, interrupts.signum), interrupts.signum)
    if "ddp_find_unused_parameters" not in recipe.training:
        _set_find_unused_parameters(args, loaded.model, size, recipe.model.caches_features)
    # A decoded batch is one gather from the memory-mapped cache (data.FastRows); a probe
    # whose features a trial of the same search computed starts from those.
    training, validation = data.FastRows.wrap(prepared.train), data.FastRows.wrap(prepared.validation)
    features = Reuse.features_key(recipe, seed) if reuse is not None and recipe.model.caches_features else None
    if features in (reuse.features if reuse is not None else {}):
        training, validation = reuse.features[features]
    trainer = trainer_class(
        model=loaded.model,
        args=args,
        train_dataset=training,
        eval_dataset=validation,
        processing_class=processor,
        data_collator=data.collate,
        compute_metrics=accumulator,
        batch_transform=transform,
        callbacks=callbacks(recipe),
        # A teacher never comes with cached features (recipe_checks.py refuses the pair).
        **({"teacher": teacher} if teacher is not None else {}),
        # Class weights, the balanced sampler and the EMA (recipe_checks.py and regularisers.py refuse them with the probe).
        **({} if recipe.model.caches_features else trainer_options(recipe)),
    )
    if features is not None:
        reuse.features[features] = (trainer.train_dataset, trainer.eval_dataset)
    return _Built(prepared, loaded, transform, accumulator, trainer, lp_record)


def _parameter_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of all parameters, bytes of the trained ones)."""
    sizes = [(p.numel() * p.element_size(), p.requires_grad) for p in model.parameters()]
    return sum(n for n, _ in sizes), sum(n for n, trained in sizes if trained)


def _stopped_in_training(out: Path, signum: int, trainer_state) -> str:
    return (
        f"stopped by {signal_name(signum)} at step {trainer_state.global_step} of {trainer_state.max_steps}; "
        f"run the same command again to continue: {what_a_rerun_does(out, trainer_state.max_steps)}"
    )


#: What _finish does after training, in order.
_AFTER_TRAINING = ("model", "final evaluation", "report and card", "push")


def _stopped_after_training(out: Path, signum: int, step: int, planned: list[str], done: list[str]) -> str:
    left = [stage for stage in planned if stage not in done]
    state = (
        f"the model is saved in {out}" + (f"; not done: {', '.join(left)}" if left else "")
        if "model" in done
        else "the final model is not saved yet"
    )
    return (
        f"stopped by {signal_name(signum)} after training had finished (step {step}): {state}; "
        f"run the same command again to finish: {what_a_rerun_does(out, step)}"
    )


def _finish(recipe, state, trainer, out, prepared, loaded, accumulator, transform, result, done, search, lp_record=None) -> dict[str, Any]:
    """After training: the final model, metrics, evaluation, report, card and push (the
    stages of ``_AFTER_TRAINING``, each added to ``done`` when it is). ``search``: the search
    that chose the recipe, for the card."""
    args = trainer.args
    splits = prepared.splits
    rows = data.FastRows.wrap
    if "early_stopping_patience" in recipe.training and trainer.state.global_step < trainer.state.max_steps:
        logger.info(
            "training: stopped early at step %d of %d (epoch %g): %s on the validation piece stopped improving",
            trainer.state.global_step, trainer.state.max_steps, trainer.state.epoch or 0, args.metric_for_best_model,
        )
    weights, _ = _parameter_bytes(loaded.model)
    final_step = trainer.state.global_step
    with disk_full_is_a_user_error(out, "the model", weights, final_step, main_process=state.is_main_process):
        if recipe.model.caches_features:
            trainer.save_full_model()  # the checkpoints hold the head alone (probe.py)
        elif lora.is_adapted(loaded.model):
            lora.save_merged(trainer)  # the checkpoints hold the adapters; the output, plain weights
        else:
            trainer.save_model()
    if trainer.args.should_save:
        follow_umask(out)
    done.append("model")
    trainer.log_metrics("train", result.metrics)
    if trainer.is_world_process_zero():
        save_metrics(out, "train", result.metrics)
    trainer.save_state()

    # The reported numbers: the eval split, once, after training (and after loading the
    # best checkpoint by validation score when the recipe asks for it).
    final = trainer.evaluate(eval_dataset=rows(prepared.eval), metric_key_prefix="eval")
    trainer.log_metrics("eval", final)
    predictions = accumulator.last
    # The other domains, each once too; their NAME_* metrics join eval_results.json.
    set_scores, set_reports = eval_sets.score(trainer, accumulator, prepared.eval_sets, out, splits.class_names)
    if trainer.is_world_process_zero():
        save_metrics(out, "eval", {**final, **set_scores})
    done.append("final evaluation")
    if trainer.is_world_process_zero():
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
            image_size=int(transform.size[0]),
            # What really ran: a linear probe on cached features applies no augmentation.
            augmentation=transform.describe(),
            eval_set_metrics=set_scores,
            eval_set_reports=set_reports,
            search=search,
            lp_phase=lp_ft.card_lines(lp_record) if lp_record is not None else None,
        )
    done.append("report and card")
    push_error = None
    if recipe.hub.push and trainer.is_world_process_zero():
        from finetune.publish import hub

        try:
            url = hub.push(out, recipe.hub.repo_id, private=recipe.hub.private, revision=recipe.hub.revision)
            logger.info("pushed to %s", url)
        except hub.PushError as err:  # the trained run is saved; only the upload failed
            push_error = err
    if recipe.hub.push:
        done.append("push")
    state.wait_for_everyone()
    if push_error is not None:
        raise push_error
    return final
