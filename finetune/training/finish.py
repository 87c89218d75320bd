"""After training: the final model saved, the eval split scored once, the report, the card and the push."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetune import data
from finetune.data.streaming.stream import ImageStream
from finetune.evaluation import calibration, eval_sets, reliability, reports, thresholds, trust
from finetune.evaluation.tta import TestTimeAugmentation, activation_for
from finetune.publish import card
from finetune.training import calibrate, finish_multi_label, lp_ft, run_files, streamed_data
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
    # A multi-label model's views average its sigmoids, a single-label one's its softmax.
    trainer.tta = TestTimeAugmentation(mode, activation_for(run.loaded.model.config))
    logger.info("final evaluation: test-time augmentation %s", trainer.tta.describe())
    return trainer.tta


def finish(run: Run, result) -> dict[str, Any]:
    """After training: the final model, metrics, evaluation, report, card and push (the
    stages of ``AFTER_TRAINING``, each added to ``run.done`` when it is)."""
    recipe, trainer, out, prepared = run.recipe, run.trainer, run.out, run.prepared
    args = trainer.args
    if "early_stopping_patience" in recipe.training and trainer.state.global_step < trainer.state.max_steps:
        logger.info(
            "training: stopped early at step %d of %d (epoch %g): %s on the validation piece stopped improving",
            trainer.state.global_step, trainer.state.max_steps, trainer.state.epoch or 0, args.metric_for_best_model,
        )
    # The final scores' test-time views, set before the temperature is fitted: what gets
    # calibrated is the prediction the final scores read, the softmax averaged over the views.
    tta = final_views(run)
    # Temperature scaling, fitted on the validation piece before anything reads the eval split.
    fitted = calibrate.fit(run) if run.calibration is not None and run.calibration.on else None
    temperature = fitted.temperature if fitted is not None else None
    # A multi-label model's thresholds, tuned on the validation piece as the model is saved
    # (T folded in), before the save: config.json holds them.
    multi = calibrate.is_multi_label(run)
    tuned = finish_multi_label.tune(run, temperature) if multi else None
    weights = sum(p.numel() * p.element_size() for p in run.loaded.model.parameters())
    final_step = trainer.state.global_step
    with (
        disk_full_is_a_user_error(out, "the model", weights, final_step, main_process=run.main),
        run_files.writing(out, *run_files.MODEL_FILES, active=run.main) as written,
    ):
        # What inference loads (not what the checkpoints hold: a probe's head, LoRA's adapters),
        # with T folded into its head.
        trainer.save_final_model(temperature=temperature)
    follow_umask(*(out / name for name in written))  # what this save wrote, nothing else
    run.done.append("model")
    if run.main:
        run_files.record(
            out, *_REPORT_FILES, *reports.pictures(multi), *(eval_sets.report_dir(out, n).name for n in prepared.eval_sets)
        )
    return _push(run, _reports(run, result, fitted, tta, tuned))


#: What ``finish`` writes after the model (and the pictures of ``reports.pictures``).
_REPORT_FILES = (
    "train_results.json", "all_results.json", "trainer_state.json", "eval_results.json", "eval_report.json",
    "README.md", calibrate.CALIBRATION_FILE, reliability.NAME,
)


def _reports(
    run: Run, result, fitted: calibration.TemperatureFit | None, tta: TestTimeAugmentation | None,
    tuned: thresholds.ThresholdFit | None = None,
) -> dict[str, Any]:
    """Metrics, the final evaluation (of the model as saved: ``fitted``'s temperature folded
    in; over ``tta``'s views; a multi-label model at its ``tuned`` thresholds), the report and the card."""
    recipe, trainer, out, prepared = run.recipe, run.trainer, run.out, run.prepared
    temperature = fitted.temperature if fitted is not None else None
    splits = prepared.splits
    # What the run computes (a multi-label run's list, when its recipe left the default).
    names = list(run.accumulator.metrics)
    multi = tuned is not None
    trainer.log_metrics("train", result.metrics)
    if trainer.is_world_process_zero():
        save_metrics(out, "train", result.metrics)
    trainer.save_state()

    # The reported numbers: the eval split, once, after training (and after loading the
    # best checkpoint by validation score when the recipe asks for it), over the test-time
    # views of evaluation.tta, as are the eval sets' below.
    # The model evaluated is the one saved: T folded in (and taken out again afterwards).
    with calibrate.folded(run, temperature):
        final = trainer.evaluate(eval_dataset=data.FastRows.wrap(prepared.eval), metric_key_prefix="eval")
        # (Which gathered rows were scored: a streamed evaluation pads and skips.)
        predictions, scored = run.accumulator.last, run.accumulator.kept
        # The other domains, each once too; their NAME_* metrics join eval_results.json.
        set_scores, set_reports = eval_sets.score(
            trainer, run.accumulator, prepared.eval_sets, out, splits.class_names, recipe.evaluation
        )
    found = {}
    if predictions is not None:
        found = trust.trust_metrics(predictions, names, len(splits.class_names), recipe.evaluation)
        final.update(trust.prefixed(found, "eval"))
    if temperature is not None:
        final["eval_calibration_temperature"] = temperature
    trainer.log_metrics("eval", final)
    if getattr(trainer, "stream", None) is not None:
        # The unreadable images every process met, into the data report.
        streamed_data.report_bad_images(trainer.stream, prepared, out, run.main)
    logger.info(
        "eval: %s on %d images of %s", trust.describe(final, names, "eval"),
        int(final.get("eval_num_images", 0)), splits.eval_name,
    )
    calibration_record = calibrate.record(
        run.calibration or calibrate.Plan(False, "not planned"), fitted, splits.eval_name, final, recipe.evaluation.tta,
        multi,
    )
    threshold_record = finish_multi_label.record(tuned, splits.class_names) if tuned is not None else None
    if trainer.is_world_process_zero():
        write_json(out / calibrate.CALIBRATION_FILE, calibration_record)
        save_metrics(out, "eval", {**final, **set_scores})
    run.done.append("final evaluation")
    if trainer.is_world_process_zero():
        report = reports.per_class_report(predictions, splits.class_names) if predictions is not None else None
        if report is not None:
            report["split"] = splits.eval_name
            report["tta"] = recipe.evaluation.tta
            report.update(trust.report_fields(found, multi))
            if threshold_record is not None:
                report["thresholds"] = threshold_record
            write_json(out / "eval_report.json", report)
            images = streamed_data.EvalRows(prepared.eval, scored) if isinstance(prepared.eval, ImageStream) else prepared.eval
            reports.write_plots(out, predictions, splits.class_names, images, trainer.state.log_history)
            reliability.write_reliability(out, predictions, f"Reliability on {splits.eval_name}: {predictions.num_images} images")
        card.write_card(out, recipe, card.CardFacts(
            eval_metrics=final,
            train_metrics=result.metrics,
            eval_name=splits.eval_name,
            class_names=splits.class_names,
            num_train=streamed_data.count(prepared.train),
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
            calibration=calibration_record,
            leaked_eval=(getattr(prepared, "data_report", None) or {}).get("leaked_eval"),
            metrics=names,
            thresholds=threshold_record,
        ))
    run.done.append("report and card")
    return final


def _push(run: Run, final: dict[str, Any]) -> dict[str, Any]:
    recipe, trainer, out = run.recipe, run.trainer, run.out
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
