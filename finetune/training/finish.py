"""After training: the final model saved, the eval split scored once, the report, the card and the push."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetune import data
from finetune.evaluation import eval_sets, metrics, plots
from finetune.evaluation.tta import TestTimeAugmentation
from finetune.publish import card
from finetune.training import lp_ft
from finetune.training.interrupts import signal_name
from finetune.training.output_dir import disk_full_is_a_user_error, what_a_rerun_does
from finetune.training.run_state import Run
from finetune.training.trainer import FinetuneTrainer
from finetune.utils.errors import UserError
from finetune.utils.files import follow_umask, save_metrics, write_json

logger = logging.getLogger("finetune")

#: What finish does after training, in order.
AFTER_TRAINING = ("model", "final evaluation", "report and card", "push")


def stopped_after_training(out: Path, signum: int, step: int, planned: list[str], done: list[str]) -> str:
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


def final_views(run: Run) -> TestTimeAugmentation | None:
    """Set the trainer's test-time augmentation for the final scores (``evaluation.tta``);
    returns it, or None for one view. The recipe checks refuse it for a probe on cached
    features, whose Trainer scores cached single-view features."""
    mode = run.recipe.evaluation.tta
    if mode == "none":
        return None
    trainer = run.trainer
    if not isinstance(trainer, FinetuneTrainer):
        raise UserError(f"evaluation.tta: '{mode}' needs the whole model to score each view; this run's "
                        "Trainer scores cached features (set model.feature_cache false)")
    trainer.tta = TestTimeAugmentation(mode)
    logger.info("final evaluation: test-time augmentation %s", trainer.tta.describe())
    return trainer.tta


def finish(run: Run, result) -> dict[str, Any]:
    """After training: the final model, metrics, evaluation, report, card and push (the
    stages of ``AFTER_TRAINING``, each added to ``run.done`` when it is)."""
    recipe, trainer, out, prepared = run.recipe, run.trainer, run.out, run.prepared
    args = trainer.args
    splits = prepared.splits
    if "early_stopping_patience" in recipe.training and trainer.state.global_step < trainer.state.max_steps:
        logger.info(
            "training: stopped early at step %d of %d (epoch %g): %s on the validation piece stopped improving",
            trainer.state.global_step, trainer.state.max_steps, trainer.state.epoch or 0, args.metric_for_best_model,
        )
    weights = sum(p.numel() * p.element_size() for p in run.loaded.model.parameters())
    final_step = trainer.state.global_step
    with disk_full_is_a_user_error(out, "the model", weights, final_step, main_process=run.main):
        # What inference loads (not what the checkpoints hold: a probe's head, LoRA's adapters).
        trainer.save_final_model()
    if trainer.args.should_save:
        follow_umask(out)
    run.done.append("model")
    trainer.log_metrics("train", result.metrics)
    if trainer.is_world_process_zero():
        save_metrics(out, "train", result.metrics)
    trainer.save_state()

    # The reported numbers: the eval split, once, after training (and after loading the
    # best checkpoint by validation score when the recipe asks for it), over the test-time
    # views of evaluation.tta, as are the eval sets' below.
    tta = final_views(run)
    final = trainer.evaluate(eval_dataset=data.FastRows.wrap(prepared.eval), metric_key_prefix="eval")
    trainer.log_metrics("eval", final)
    predictions = run.accumulator.last
    # The other domains, each once too; their NAME_* metrics join eval_results.json.
    set_scores, set_reports = eval_sets.score(trainer, run.accumulator, prepared.eval_sets, out, splits.class_names)
    if trainer.is_world_process_zero():
        save_metrics(out, "eval", {**final, **set_scores})
    run.done.append("final evaluation")
    if trainer.is_world_process_zero():
        report = metrics.per_class_report(predictions, splits.class_names) if predictions is not None else None
        if report is not None:
            report["split"] = splits.eval_name
            write_json(out / "eval_report.json", report)
            plots.write_plots(out, predictions, splits.class_names, prepared.eval, trainer.state.log_history)
        card.write_card(out, recipe, card.CardFacts(
            eval_metrics=final,
            train_metrics=result.metrics,
            eval_name=splits.eval_name,
            class_names=splits.class_names,
            num_train=len(prepared.train),
            num_validation=len(prepared.validation) if prepared.validation is not None else 0,
            report=report,
            trainable=(run.loaded.trainable, run.loaded.total),
            adapters=run.loaded.lora.describe() if run.loaded.lora is not None else None,
            image_size=int(run.transform.size[0]),
            # What really ran: a linear probe on cached features applies no augmentation.
            augmentation=run.transform.describe(),
            tta=tta.describe() if tta is not None else None,
            eval_set_metrics=set_scores,
            eval_set_reports=set_reports,
            search=run.search,
            lp_phase=lp_ft.card_lines(run.lp_record) if run.lp_record is not None else None,
        ))
    run.done.append("report and card")
    push_error = None
    if recipe.hub.push and trainer.is_world_process_zero():
        from finetune.publish import hub

        try:
            url = hub.push(out, recipe.hub.repo_id, private=recipe.hub.private, revision=recipe.hub.revision)
            logger.info("pushed to %s", url)
        except hub.PushError as err:  # the trained run is saved; only the upload failed
            push_error = err
    if recipe.hub.push:
        run.done.append("push")
    run.state.wait_for_everyone()
    if push_error is not None:
        raise push_error
    return final
