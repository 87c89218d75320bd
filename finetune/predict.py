"""Inference from a saved output folder: `finetune eval` and `finetune predict` (issue #4).

``finetune eval OUTPUT_DIR --data DATASET [--split test]`` scores the saved model on any
data set a recipe accepts, with the same decode path and metrics as training, and writes
the report (``eval_report.json`` + PNGs) into a folder of its own.

``finetune predict OUTPUT_DIR IMAGE_OR_FOLDER...`` labels images the way
``transformers.pipeline("image-classification")`` would (the saved image processor, then
softmax), after the same EXIF rotation and RGB conversion as training.

Heavy libraries are imported inside the functions so that ``finetune push`` and
``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from .util import first_line, write_json

#: Recipe keys named in the data package's messages → the options of `finetune eval` that set them.
_CLI_NAMES = {
    "data.image_column": "--image-column",
    "data.label_column": "--label-column",
    "data.dataset": "--data",
    "data.train_split": "--split",
}


class PredictError(ValueError):
    """A problem with the saved model, the data or the options; one line, with the fix."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _error(message: str) -> int:
    from .run import _error as run_error

    return run_error(message)


# ------------------------------------------------------------------------ saved model


@dataclass
class Saved:
    """A finished run's model, its image processor and its class names (index order)."""

    path: Path
    model: Any
    processor: Any
    class_names: list[str]
    device: Any


def load_saved(output_dir: str | Path) -> Saved:
    """The model and processor that a run saved in ``output_dir``, in eval mode."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    path = Path(output_dir)
    if not path.is_dir():
        raise PredictError(f"OUTPUT_DIR: no such folder '{output_dir}'; pass the output_dir of a finished run")
    if not (path / "config.json").is_file():
        raise PredictError(
            f"OUTPUT_DIR: '{output_dir}' holds no saved model (config.json is missing); "
            "pass the output_dir of a finished run"
        )
    try:
        # local_files_only: a folder must never turn into a Hub lookup.
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModelForImageClassification.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise PredictError(
            f"OUTPUT_DIR: cannot load the model saved in '{output_dir}' ({first_line(err)}); "
            "is the run finished (model.safetensors and preprocessor_config.json present)?"
        ) from None
    config = model.config
    names = [str(config.id2label.get(i, i)) for i in range(config.num_labels)]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    return Saved(path, model, processor, names, device)


# ------------------------------------------------------------------------------- eval


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="a finished run's output folder")
    parser.add_argument(
        "--data", required=True,
        help="the data set, as data.dataset in a recipe: a Hub id, a local folder, a data file or builtin:NAME",
    )
    parser.add_argument("--split", default="test", help="the split to score (default: test)")
    parser.add_argument("--config", default=None, help="the data set's configuration name, if it has several")
    parser.add_argument("--revision", default=None, help="the data set's revision (Hub data sets)")
    parser.add_argument("--image-column", default=None, help="the image column (default: found from the features)")
    parser.add_argument("--label-column", default=None, help="the label column (default: found from the features)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument(
        "--report-dir", default=None,
        help="where eval_report.json and the PNGs go (default: OUTPUT_DIR/eval-<dataset>-<split>/)",
    )


def _slug(text: str) -> str:
    """A folder-name-safe version of a data set name or split."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "data"


def default_report_dir(output_dir: Path, dataset: str, split: str) -> Path:
    from .card import is_hub_id

    name = dataset.rstrip("/\\")
    # Hub ids keep their namespace (as in the Hub cache: "user--name"); paths their last part.
    name = name.replace("/", "--") if is_hub_id(name) else Path(name).name or name
    return output_dir / f"eval-{_slug(name)}-{_slug(split)}"


def _cli_message(err: BaseException) -> str:
    """The data package speaks in recipe keys; `finetune eval` users set them with options."""
    message = str(err)
    for key, option in _CLI_NAMES.items():
        message = message.replace(key, option)
    return message


def map_to_model_classes(dataset, label_column: str, class_names: list[str], where: str):
    """``dataset`` with ``label_column`` a ClassLabel of the model's classes, in its order."""
    from datasets import ClassLabel, Dataset, Features

    from .data import encode_labels

    feature = dataset.features[label_column]
    used = set(dataset[label_column])
    if None in used or (isinstance(feature, ClassLabel) and -1 in used):
        raise PredictError(
            f"{where} has unlabelled images (label {'-1' if -1 in used else 'missing'}); scoring needs the true "
            "labels: name a labelled split, or use `finetune predict` to label the images"
        )
    if isinstance(feature, ClassLabel):
        values = {feature.names[i] for i in used if i is not None and i >= 0}
    else:
        values = {str(v) for v in used}
    unknown = sorted(values - set(class_names))
    if unknown:
        shown = ", ".join(unknown[:10]) + (" …" if len(unknown) > 10 else "")
        known = ", ".join(class_names[:10]) + (" …" if len(class_names) > 10 else "")
        raise PredictError(
            f"{where} has {len(unknown)} class(es) that the model does not know: {shown}; "
            f"the model was trained on: {known}; evaluate on images of those classes only"
        )
    # encode_labels maps every other split onto the classes of a reference split: here a
    # one-row-per-class stand-in carrying the model's own classes.
    reference = Dataset.from_dict(
        {label_column: list(range(len(class_names)))},
        features=Features({label_column: ClassLabel(names=class_names)}),
    )
    _, mapped, _ = encode_labels(reference, {"eval": dataset}, label_column)
    return mapped["eval"]


def _read_log_history(output_dir: Path) -> list[dict]:
    try:
        state = json.loads((output_dir / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    history = state.get("log_history") if isinstance(state, dict) else None
    return history if isinstance(history, list) else []


def evaluate_saved(
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
) -> tuple[dict[str, Any], Path]:
    """Score the saved model on ``dataset[split]``; returns the report and where it went."""
    import torch
    from transformers import EvalPrediction

    from . import data, metrics, plots
    from .recipe import DataConfig

    out = Path(output_dir)
    saved = load_saved(out)
    target = Path(report_dir) if report_dir else default_report_dir(out, dataset, split)
    if target.resolve() == out.resolve():
        raise PredictError(
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
            raise PredictError(f"--split: '{split}' is not a split of '{dataset}'; it has: {', '.join(raw)}")
        rows = raw[split]
        image_col, label_col = data.find_columns(rows, cfg)
        rows = map_to_model_classes(rows, label_col, saved.class_names, f"--data '{dataset}' split '{split}'")
        decoded = data.decode(rows, saved.processor, image_col, label_col, None, f"decoding {split}")
    except data.DataError as err:
        raise PredictError(_cli_message(err)) from None
    images = decoded.dataset
    if len(images) == 0:
        first = decoded.bad[0] if decoded.bad else {"path": dataset, "reason": "no rows"}
        raise PredictError(
            f"--data '{dataset}' split '{split}': no image could be read (e.g. {first['path']}: {first['reason']})"
        )
    for item in decoded.bad:
        print(f"finetune: warning: cannot read {item['path']} ({item['reason']}); left out", file=sys.stderr)

    # As in training: the processor's normalisation, and its resize for a split that decode
    # kept below the model's input size.
    transform = data.BatchTransform.for_processor(saved.processor, None)
    accumulator = metrics.MetricAccumulator(["accuracy"], len(saved.class_names))
    model, device = saved.model, saved.device
    dtype = next(model.parameters()).dtype
    total_loss = 0.0
    with torch.inference_mode():
        # Batch by batch from the memory-mapped cache; the accumulator keeps a few numbers
        # per image, never the logits.
        rows = data.FastRows.wrap(images)
        for start in range(0, len(images), batch_size):
            batch = data.collate(rows.__getitems__(list(range(start, min(start + batch_size, len(images))))))
            pixels = transform(batch["pixel_values"].to(device), train=False).to(dtype)
            labels = batch["labels"].to(device)
            logits = model(pixel_values=pixels).logits.float()
            total_loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            accumulator(
                EvalPrediction(predictions=logits, label_ids=labels),
                compute_result=start + batch_size >= len(images),
            )
    predictions = accumulator.last
    assert predictions is not None
    report = metrics.per_class_report(predictions, saved.class_names)
    report.update(
        {
            "loss": total_loss / len(images),
            "dataset": dataset,
            "config": config,
            "split": split,
            "model": str(out),
            "bad_files": decoded.bad,
        }
    )
    target.mkdir(parents=True, exist_ok=True)
    write_json(target / "eval_report.json", report)
    plots.write_plots(target, predictions, saved.class_names, images, _read_log_history(out))
    return report, target


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        report, target = evaluate_saved(
            args.output_dir, args.data, args.split, config=args.config, revision=args.revision,
            image_column=args.image_column, label_column=args.label_column,
            batch_size=args.batch_size, report_dir=args.report_dir,
        )
    except PredictError as err:
        return _error(str(err))
    bad = len(report["bad_files"])
    print(
        f"eval: accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f} on "
        f"{report['num_images']} images of '{args.data}' (split {args.split})"
        f"{f'; {bad} unreadable file(s) left out' if bad else ''}; report in {target}"
    )
    return 0


# ---------------------------------------------------------------------------- predict


def add_predict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="a finished run's output folder")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders (recursive)")
    parser.add_argument("--top-k", type=_positive_int, default=5, help="classes listed per image (default: 5)")
    parser.add_argument(
        "--format", choices=("csv", "jsonl"), default=None,
        help="output format (default: jsonl when --output ends in .jsonl, else csv)",
    )
    parser.add_argument("--output", default=None, help="write here instead of to stdout")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default: 32)")


def collect_inputs(inputs: list[str]) -> list[tuple[str, str | None]]:
    """(path, problem) for every file to label, in a deterministic order.

    Folders are walked recursively, sorted by path components; junk files and folders
    are skipped silently; a named path that does not exist is a problem, not an error.
    """
    from . import data  # the one definition of junk, shared with the training data report

    found: list[tuple[str, str | None]] = []
    seen: set[str] = set()

    def add(path: str, problem: str | None = None) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append((path, problem))

    for item in inputs:
        if os.path.isdir(item):
            files = []
            for root, dirs, names in os.walk(item):
                dirs[:] = [d for d in dirs if not data.is_junk(d, folder=True)]
                files += [os.path.join(root, n) for n in names if not data.is_junk(n)]
            for path in sorted(files, key=lambda p: Path(os.path.relpath(p, item)).parts):
                add(path)
        elif os.path.exists(item):
            add(item)
        else:
            add(item, "no such file or folder")
    return found


class _Writer:
    """Streams one row per input: the top-k classes and probabilities, or the error."""

    def __init__(self, stream: IO[str], fmt: str, k: int) -> None:
        self.stream, self.fmt, self.k = stream, fmt, k
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            header = ["path"]
            for i in range(1, k + 1):
                header += [f"label_{i}", f"probability_{i}"]
            self.csv.writerow(header + ["error"])

    def row(self, path: str, top: list[tuple[str, float]] | None = None, error: str | None = None) -> None:
        if self.fmt == "jsonl":
            record: dict[str, Any] = {"path": path}
            if error is None:
                record["predictions"] = [{"label": label, "probability": round(p, 6)} for label, p in top or []]
            else:
                record["error"] = error
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            cells = [path]
            for label, p in top or []:
                cells += [label, f"{p:.6f}"]
            cells += [""] * (1 + 2 * self.k - len(cells))
            self.csv.writerow(cells + [error or ""])
        self.stream.flush()


def preprocess(saved: Saved, path: str):
    """One image file → the model's input tensor (1×3×H×W), as the pipeline would make it."""
    from .data import open_image, to_rgb

    image = to_rgb(open_image(path))
    # One image at a time: a batch of full-size photos could take gigabytes; the
    # processed tensors are small.
    return saved.processor(images=[image], return_tensors="pt")["pixel_values"]


def label_pixels(saved: Saved, pixels, k: int) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each row of a processed batch."""
    import torch

    with torch.inference_mode():
        dtype = next(saved.model.parameters()).dtype
        logits = saved.model(pixel_values=pixels.to(saved.device, dtype)).logits.float()
        top = logits.softmax(-1).topk(min(k, logits.shape[-1]), dim=-1)
    return [
        [(saved.class_names[int(i)], float(p)) for i, p in zip(indices, values)]
        for indices, values in zip(top.indices.tolist(), top.values.tolist())
    ]


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    fmt = args.format or ("jsonl" if (args.output or "").endswith(".jsonl") else "csv")
    try:
        saved = load_saved(args.output_dir)
    except PredictError as err:
        return _error(str(err))
    items = collect_inputs(args.inputs)
    if not items:
        return _error(f"no files found in {', '.join(args.inputs)}; name image files or folders that hold some")
    k = min(args.top_k, len(saved.class_names))
    try:
        stream = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    except OSError as err:
        return _error(f"--output: cannot write '{args.output}' ({err.strerror}); check the folder exists")
    labelled = failed = 0
    try:
        writer = _Writer(stream, fmt, k)
        for chunk in _batches(items, args.batch_size):
            tensors, problems = [], []
            for path, problem in chunk:
                tensor = None
                if problem is None:
                    try:
                        tensor = preprocess(saved, path)
                    except Exception as err:  # noqa: BLE001 - any unreadable file is reported, none is fatal
                        problem = f"not a readable image ({type(err).__name__}: {first_line(err)})"
                        print(f"finetune: warning: skipped {path}: {problem}", file=sys.stderr)
                else:
                    print(f"finetune: warning: skipped {path}: {problem}", file=sys.stderr)
                tensors.append(tensor)
                problems.append(problem)
            ok = [t for t in tensors if t is not None]
            tops = iter(label_pixels(saved, torch.cat(ok), k) if ok else [])
            # Rows in input order, good and bad interleaved as they were named.
            for (path, _), tensor, problem in zip(chunk, tensors, problems):
                if tensor is None:
                    writer.row(path, error=problem)
                    failed += 1
                else:
                    writer.row(path, next(tops))
                    labelled += 1
    finally:
        if stream is not sys.stdout:
            stream.close()
    if not labelled:
        return _error(f"none of the {failed} file(s) could be labelled (see the warnings above); name image files")
    print(
        f"finetune: labelled {labelled} image(s)"
        + (f"; {failed} file(s) could not be read (see the 'error' {'field' if fmt == 'jsonl' else 'column'})" if failed else "")
        + (f"; written to {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0
