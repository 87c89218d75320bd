"""Extra evaluation sets (other domains, ``data.eval_sets``): checked against the model's classes before training, scored once after it.

Each set is any data set a recipe accepts, one split of it. Before any training time is
spent its labels are mapped onto the model's classes by name (``data.map_to_model_classes``,
as ``finetune eval`` does): a set with a class the model lacks stops the run with one line;
a set that lacks some of the model's classes is fine, and its macro scores average over the
classes it has (:mod:`finetune.evaluation.metrics`), its report naming the others. Its
images are decoded then too, so that an unreadable set also stops the run before training.
After training each set is scored once, like the eval split: metrics ``NAME_*`` in
``eval_results.json`` (with their bootstrap intervals and calibration error), a report
folder ``eval-NAME/`` (``eval_report.json``, the PNGs and ``reliability.png``) and its own
rows in the card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune import data
from finetune.evaluation import metrics, reliability, reports, trust
from finetune.recipe import DataConfig, EvalSetConfig, EvaluationConfig
from finetune.utils.files import write_json

logger = logging.getLogger("finetune")


@dataclass
class EvalSet:
    """One decoded evaluation set, ready to score."""

    name: str
    cfg: EvalSetConfig
    images: Any  # the decoded split (data.decode), rows in the model's class indices
    bad: list[dict] = field(default_factory=list)


def report_dir(out: Path, name: str) -> Path:
    """Where a set's report goes: ``OUTPUT_DIR/eval-NAME/`` (as ``finetune eval`` names its folders)."""
    return Path(out) / f"eval-{name}"


def _keyed(message: str, where: str) -> str:
    """The data package names the recipe's data.* keys; here they are the set's own."""
    for key, own in (
        ("data.image_column", f"{where}.image_column"),
        ("data.label_column", f"{where}.label_column"),
        ("data.dataset", f"{where}.dataset"),
        ("data.train_split", f"{where}.split"),
    ):
        message = message.replace(key, own)
    return message


def prepare(
    sets: dict[str, EvalSetConfig],
    class_names: list[str],
    processor,
    workers: int | None,
    max_bad_fraction: float,
    run: str | None = None,
    multi_label: bool = False,
) -> dict[str, EvalSet]:
    """Load, class-map and decode every set; raises a one-line DataError naming the set's key
    (``data.eval_sets.NAME...``) for a missing split or column, a class the model lacks,
    unlabelled images, or too many unreadable ones. ``run``: the run folder the sets are
    decoded for (noted in the index of decode caches)."""
    out: dict[str, EvalSet] = {}
    for name, cfg in sets.items():
        where = f"data.eval_sets.{name}"
        as_data = DataConfig(
            dataset=cfg.dataset, config=cfg.config, revision=cfg.revision, train_split=cfg.split, eval_split=None,
            validation_fraction=0.0, image_column=cfg.image_column, label_column=cfg.label_column,
        )
        try:
            raw = data.load_raw(as_data)
            if cfg.split not in raw:
                raise data.DataError(
                    f"{where}.split: '{cfg.split}' is not a split of '{cfg.dataset}'; it has: {', '.join(raw)}"
                )
            rows = raw[cfg.split]
            image_col, label_col = data.find_columns(rows, as_data)
            rows = data.map_to_model_classes(
                rows, label_col, class_names, f"{where} ('{cfg.dataset}' split '{cfg.split}')", multi_label=multi_label
            )
            decoded = data.decode(
                rows, processor, image_col, label_col, workers, f"decoding eval set {name}",
                owner=data.CacheOwner(cfg.dataset, run) if run is not None else None,
            )
        except data.DataError as err:
            raise data.DataError(_keyed(str(err), where)) from None
        total = len(decoded.dataset) + len(decoded.bad)
        if total and len(decoded.bad) / total > max_bad_fraction:
            first = decoded.bad[0]
            raise data.DataError(
                f"{where}: {len(decoded.bad)} of {total} images cannot be read ({100 * len(decoded.bad) / total:.1f}% > "
                f"data.max_bad_fraction {max_bad_fraction:g}), e.g. {first['path']}: {first['reason']}; fix or remove "
                "them, or raise data.max_bad_fraction"
            )
        if len(decoded.dataset) == 0:
            raise data.DataError(f"{where}: '{cfg.dataset}' split '{cfg.split}' has no images; name a split that has some")
        for item in decoded.bad[:20]:
            logger.warning("data: eval set %s: set aside %s (%s)", name, item["path"], item["reason"])
        out[name] = EvalSet(name, cfg, decoded.dataset, decoded.bad)
    return out


def score(
    trainer, accumulator: metrics.MetricAccumulator, sets: dict[str, EvalSet], out: Path, class_names: list[str],
    evaluation: EvaluationConfig | None = None,
):
    """Score every set once with the run's own evaluation; returns (the ``NAME_*`` metrics for
    ``eval_results.json``, with their intervals and calibration error
    (:mod:`finetune.evaluation.trust`, set by ``evaluation``), NAME → per-class report). Call
    it on every process: the Trainer's evaluation gathers across them; the reports are written
    by the main process."""
    scores: dict[str, Any] = {}
    set_reports: dict[str, dict[str, Any]] = {}
    for name, s in sets.items():
        result = trainer.evaluate(eval_dataset=data.FastRows.wrap(s.images), metric_key_prefix=name)
        predictions = accumulator.last
        found = {}
        if predictions is not None:
            found = trust.trust_metrics(predictions, accumulator.metrics, len(class_names), evaluation)
            result.update(trust.prefixed(found, name))
        trainer.log_metrics(name, result)
        scores.update(result)
        if predictions is None or not trainer.is_world_process_zero():
            continue
        report = reports.per_class_report(predictions, class_names)
        report.update(
            {
                "name": name,
                "loss": float(result[f"{name}_loss"]),
                "dataset": s.cfg.dataset,
                "config": s.cfg.config,
                "split": s.cfg.split,
                "bad_files": s.bad,
                **trust.report_fields(found, reports.is_multi_label(predictions)),
            }
        )
        folder = report_dir(out, name)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "eval_report.json", report)
        reports.write_plots(folder, predictions, class_names, s.images, trainer.state.log_history)
        reliability.write_reliability(folder, predictions, f"Reliability on eval set {name}: {predictions.num_images} images")
        set_reports[name] = report
        absent = report["absent_classes"]
        logger.info(
            "eval set %s: %s on %d images of '%s' (split %s)%s; report in %s",
            name, trust.describe(result, accumulator.metrics, name), report["num_images"], s.cfg.dataset, s.cfg.split,
            f"; {len(absent)} of the model's classes absent, macro scores over the other {len(class_names) - len(absent)}"
            if absent else "",
            folder,
        )
    return scores, set_reports
