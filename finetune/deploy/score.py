"""`finetune eval`: score a saved model on a data set through the training's Trainer evaluation, and write the report.

``finetune eval OUTPUT_DIR --data DATASET [--split test]`` takes any data set a recipe
accepts, decodes it as training does, and scores it with the same ``FinetuneTrainer``
evaluation (uint8 batches normalised on the device, metrics accumulated batch by batch)
that produced the run's own numbers. The report (``eval_report.json`` + PNGs) goes into a
folder of its own; the run's files are only read. A folder written by ``finetune export``
is scored with ONNX Runtime instead (``model.onnx``, or ``model.int8.onnx`` with
``--int8``), on the images as the exported model's own preprocessing makes them.

A multi-label model (``problem_type`` in its config) is scored as its run scored it: the
sigmoid per class (averaged over the test-time views), its per-class thresholds from its
config (``label_thresholds``), the multi-label metrics (mAP, micro and macro F1, exact match)
with their bootstrap intervals, the binary calibration error, and its pictures
(``per_class_ap.png``, ``worst_images.png``).

Heavy libraries are imported inside the functions so that ``--help`` stays fast.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from finetune.data import multi_label
from finetune.deploy import onnx_classifier as onnx_model
from finetune.deploy.saved_run import choose_tta, load_saved
from finetune.utils.devices import has_accelerator
from finetune.utils.errors import InferenceError, first_line
from finetune.utils.files import slug, write_json
from finetune.utils.locations import is_hub_id

#: Recipe keys named in the data package's messages → the options of `finetune eval` that set them.
_CLI_NAMES = {
    "data.image_column": "--image-column",
    "data.label_column": "--label-column",
    "data.dataset": "--data",
    "data.train_split": "--split",
}


# ----------------------------------------------------------------------- report folder


def default_report_dir(output_dir: Path, dataset: str, split: str) -> Path:
    name = dataset.rstrip("/\\")
    # Hub ids keep their namespace (as in the Hub cache: "user--name"); paths their last part.
    name = name.replace("/", "--") if is_hub_id(name) else Path(name).name or name
    return output_dir / f"eval-{slug(name, 'data')}-{slug(split, 'data')}"


def _record(out: Path, target: Path) -> None:
    """What the report adds inside a run's folder goes into the run's manifest before it is written."""
    from finetune.evaluation import reports
    from finetune.training import run_files
    from finetune.training.readers import run_folder

    run = run_folder(out)
    if run is not None:
        # A multi-label report's pictures too (per_class_ap.png, worst_images.png).
        run_files.record_made(run, target, sorted(run_files.REPORT_FILES | set(reports.PICTURES)))


def _read_log_history(output_dir: Path) -> list[dict]:
    try:
        state = json.loads((output_dir / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    history = state.get("log_history") if isinstance(state, dict) else None
    return history if isinstance(history, list) else []


# ------------------------------------------------------------------------------- data


def _cli_message(err: BaseException) -> str:
    """The data package speaks in recipe keys; `finetune eval` users set them with options."""
    message = str(err)
    for key, option in _CLI_NAMES.items():
        message = message.replace(key, option)
    return message


# ------------------------------------------------------------------------- scoring


def trainer_scores(saved, images, batch_size: int, output_dir: str, tta: str = "none"):
    """The training's final evaluation, on a decoded split: (Trainer metrics, Predictions).

    The same ``FinetuneTrainer`` with the same batch transform (no augmentation), collator,
    batch-by-batch ``MetricAccumulator`` and test-time views (``tta``, a mode of
    ``evaluation.tta``); full precision, so the numbers do not depend on whether the GPU has
    bf16.
    """
    from transformers import TrainingArguments

    from finetune import data
    from finetune.evaluation import metrics
    from finetune.evaluation.tta import TestTimeAugmentation, activation_for
    from finetune.recipe.metric_names import MULTI_LABEL_METRICS
    from finetune.training.trainer import FinetuneTrainer

    args = TrainingArguments(
        output_dir=output_dir,
        report_to="none",
        per_device_eval_batch_size=batch_size,
        # As in training: metrics batch by batch, and the decoded columns go in untouched.
        batch_eval_metrics=True,
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=not has_accelerator(),
    )
    # As in training: the processor's normalisation, and its resize for a split that decode
    # kept below the model's input size.
    transform = data.BatchTransform.for_processor(saved.processor, None)
    config = saved.model.config
    multi = multi_label.is_multi_label(config)
    accumulator = metrics.MetricAccumulator(
        list(MULTI_LABEL_METRICS) if multi else ["accuracy"], len(saved.class_names), multi_label=multi
    )
    if multi:  # the thresholds the run tuned and saved
        accumulator.thresholds = multi_label.thresholds(config, saved.class_names)
    trainer = FinetuneTrainer(
        model=saved.model,
        args=args,
        data_collator=data.collate,
        compute_metrics=accumulator,
        batch_transform=transform,
        tta=TestTimeAugmentation(tta, activation_for(config)) if tta != "none" else None,
    )
    # Batches gathered from the memory-mapped cache in one read, as training reads them.
    scores = trainer.evaluate(eval_dataset=data.FastRows.wrap(images), metric_key_prefix="eval")
    assert accumulator.last is not None  # the Trainer called it with compute_result=True
    return scores, accumulator.last


class _ExportedImages:
    """The eval rows as the exported model saw them (resized and cropped uint8), read again
    one row at a time for the mistakes picture."""

    def __init__(self, classifier, rows, image_column: str, kept: list[int]) -> None:
        self.classifier, self.rows, self.image_column, self.kept = classifier, rows, image_column, kept

    def __getitem__(self, index: int) -> dict[str, Any]:
        import numpy as np

        image = onnx_model.read_image(self.rows[self.kept[index]][self.image_column])
        return {"pixel_values": np.asarray(self.classifier.preprocessor.geometry(image)).transpose(2, 0, 1)}


def exported_config(classifier) -> dict[str, Any]:
    """The exported folder's config.json (its problem_type and thresholds)."""
    try:
        config = json.loads((Path(classifier.path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _onnx_multi_label(logits, label_values, class_names: list[str], config: dict[str, Any]):
    """(MultiLabelPredictions, mean binary cross-entropy) of an exported multi-label model."""
    import numpy as np
    from scipy.special import expit, log_expit

    from finetune.evaluation.multi_label_metrics import MultiLabelPredictions

    lists = [list(v) if isinstance(v, (list, tuple)) else [int(v)] for v in label_values]
    targets = multi_label.multi_hot(lists, len(class_names))
    z = np.asarray(logits, dtype=np.float64)
    loss = float(-np.mean(np.where(targets > 0.5, log_expit(z), log_expit(-z))))
    probs = expit(z).astype(np.float32)
    return MultiLabelPredictions(probs, targets.astype(np.uint8), multi_label.thresholds(config, class_names)), loss


def onnx_scores(classifier, rows, image_col: str, label_col: str, batch_size: int):
    """An exported model's predictions on raw rows (labels in the model's classes) with ONNX
    Runtime: (Predictions, mean cross-entropy, the images for the plots, unreadable files);
    for a multi-label export (its config.json's problem_type) MultiLabelPredictions at its
    config's thresholds and the mean binary cross-entropy."""
    import numpy as np
    from datasets import Image

    from finetune.evaluation.metrics import TOP_K, Predictions

    config = exported_config(classifier)
    multi = multi_label.is_multi_label(config)

    rows = rows.cast_column(image_col, Image(decode=False))
    probs, labels, kept, bad = [], [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows.select(range(start, min(start + batch_size, len(rows))))
        pixels = []
        for offset, (value, label) in enumerate(zip(chunk[image_col], chunk[label_col])):
            try:
                pixels.append(classifier.preprocessor([onnx_model.read_image(value)]))
            except Exception as err:  # noqa: BLE001 - an unreadable file is left out and reported, as in training
                bad.append({"path": value.get("path") or f"row {start + offset}", "reason": f"{type(err).__name__}: {first_line(err)}"})
                continue
            labels.append(label if multi else int(label))
            kept.append(start + offset)
        if pixels:
            batch = np.concatenate(pixels)
            probs.append(classifier.logits(batch) if multi else classifier.probabilities(batch))
    if not kept:
        return None, 0.0, None, bad
    images = _ExportedImages(classifier, rows, image_col, kept)
    if multi:
        return (*_onnx_multi_label(np.concatenate(probs), labels, classifier.class_names, config), images, bad)
    p, y = np.concatenate(probs), np.asarray(labels, dtype=np.int64)
    topk = np.argsort(-p, axis=-1, kind="stable")[:, : min(TOP_K, p.shape[-1])]
    rows_idx = np.arange(len(y))
    predictions = Predictions(y, topk[:, 0], topk, p[rows_idx, topk[:, 0]], p[rows_idx, y])
    loss = float(-np.log(np.clip(predictions.true_prob, 1e-12, None)).mean())
    return predictions, loss, images, bad


def evaluate_saved(output_dir: str | Path, dataset: str, split: str = "test", **options: Any) -> tuple[dict[str, Any], Path]:
    """Score the saved (or exported) model on ``dataset[split]``; returns the report and where it
    went. The options are ``_evaluate``'s. Under the run's lock, shared: refused while a run
    holds it (:mod:`finetune.training.readers`)."""
    from finetune.training.readers import reading

    with reading(output_dir, InferenceError):
        return _evaluate(output_dir, dataset, split, **options)


def _evaluate(
    output_dir: str | Path,
    dataset: str,
    split: str = "test",
    *,
    config: str | None = None,
    revision: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 32,
    report_dir: str | Path | None = None,
    int8: bool = False,
    tta: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """Score the saved (or exported) model on ``dataset[split]``; returns the report and where
    it went. ``tta``: the test-time views (None: those the run recorded; an export scores one)."""
    from finetune import data
    from finetune.recipe import DataConfig

    out = Path(output_dir)
    exported = onnx_model.is_export(out)
    if int8 and not exported:
        raise InferenceError(
            f"--int8: '{output_dir}' is not an exported folder; run `finetune export OUTPUT_DIR --quantize int8` and pass its folder"
        )
    saved = onnx_model.load_export(out, int8=int8) if exported else load_saved(out)
    views = choose_tta(saved, tta)
    target = Path(report_dir) if report_dir else default_report_dir(out, dataset, split)
    if target.resolve() == out.resolve():
        raise InferenceError(
            f"--report-dir: '{target}' is the run's own folder, whose eval_report.json and plots would be "
            "overwritten; name another folder"
        )
    cfg = DataConfig(
        dataset=dataset, config=config, revision=revision, train_split=split, eval_split=None,
        validation_fraction=0.0, image_column=image_column, label_column=label_column,
    )
    try:
        raw = data.load_raw(cfg)
        if split not in raw:
            raise InferenceError(f"--split: '{split}' is not a split of '{dataset}'; it has: {', '.join(raw)}")
        rows = raw[split]
        image_col, label_col = data.find_columns(rows, cfg)
        rows = data.map_to_model_classes(
            rows, label_col, saved.class_names, f"--data '{dataset}' split '{split}'", multi_label=saved.multi_label
        )
        if exported:
            return _write_report(
                out, target, dataset, config, split, saved.class_names,
                *onnx_scores(saved, rows, image_col, label_col, batch_size), model_file=saved.model_file.name,
                tta=views,
            )
        decoded = data.decode(
            rows, saved.processor, image_col, label_col, None, f"decoding {split}", owner=data.CacheOwner(dataset, str(out))
        )
    except data.DataError as err:
        raise InferenceError(_cli_message(err)) from None
    images = decoded.dataset
    if len(images) == 0:
        first = decoded.bad[0] if decoded.bad else {"path": dataset, "reason": "no rows"}
        raise InferenceError(
            f"--data '{dataset}' split '{split}': no image could be read (e.g. {first['path']}: {first['reason']})"
        )
    for item in decoded.bad:
        print(f"finetune: warning: cannot read {item['path']} ({item['reason']}); left out", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="finetune-eval-") as scratch:  # the Trainer's output_dir
        scores, predictions = trainer_scores(saved, images, batch_size, scratch, views)
    return _write_report(
        out, target, dataset, config, split, saved.class_names, predictions, float(scores["eval_loss"]), images,
        decoded.bad, tta=views,
    )


def _write_report(
    out: Path, target: Path, dataset: str, config: str | None, split: str, class_names: list[str],
    predictions, loss: float, images, bad: list[dict], model_file: str | None = None, tta: str = "none",
) -> tuple[dict[str, Any], Path]:
    from finetune.evaluation import reliability, reports, trust
    from finetune.recipe.metric_names import MULTI_LABEL_METRICS, SINGLE_LABEL_METRICS

    if predictions is None:
        first = bad[0] if bad else {"path": dataset, "reason": "no rows"}
        raise InferenceError(
            f"--data '{dataset}' split '{split}': no image could be read (e.g. {first['path']}: {first['reason']})"
        )
    for item in bad if model_file else []:  # the PyTorch path warned while decoding
        print(f"finetune: warning: cannot read {item['path']} ({item['reason']}); left out", file=sys.stderr)
    multi = reports.is_multi_label(predictions)
    result = reports.per_class_report(predictions, class_names)
    if multi:
        result["thresholds"] = {
            "source": "the model's config.json (label_thresholds), as its run tuned them",
            "values": {name: float(t) for name, t in zip(class_names, predictions.thresholds)},
        }
    result.update({
        "loss": loss, "dataset": dataset, "config": config, "split": split, "model": str(out), "tta": tta,
        "bad_files": bad,
    })
    # The intervals and calibration error, as the run's own evaluation gives them (its
    # recipe's evaluation settings when the folder has them), of the probabilities averaged
    # over the views when there are several.
    known = MULTI_LABEL_METRICS if multi else SINGLE_LABEL_METRICS
    found = trust.trust_metrics(predictions, list(known), len(class_names), evaluation_settings(out))
    result.update(trust.report_fields(found, multi))
    if model_file:
        result["runtime"] = f"ONNX Runtime ({model_file})"
    _record(out, target)
    target.mkdir(parents=True, exist_ok=True)
    write_json(target / "eval_report.json", result)
    reports.write_plots(target, predictions, class_names, images, _read_log_history(out))
    reliability.write_reliability(target, predictions, f"Reliability on '{dataset}' split {split}: {predictions.num_images} images")
    return result, target


def evaluation_settings(output_dir: Path):
    """The ``evaluation`` block of the run's ``recipe.json`` (defaults where it has none, or
    none that this version reads)."""
    import dataclasses

    from finetune.recipe import EvaluationConfig

    try:
        saved = json.loads((Path(output_dir) / "recipe.json").read_text())
        block = saved.get("evaluation") if isinstance(saved, dict) else None
    except (OSError, json.JSONDecodeError):
        block = None
    if not isinstance(block, dict):
        return EvaluationConfig()
    known = {f.name for f in dataclasses.fields(EvaluationConfig)}
    try:
        return EvaluationConfig(**{k: v for k, v in block.items() if k in known})
    except TypeError:
        return EvaluationConfig()


