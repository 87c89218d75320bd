"""`finetune predict`: label image files with a saved model, as ``pipeline("image-classification")`` would.

``finetune predict OUTPUT_DIR IMAGE_OR_FOLDER...`` runs the saved image processor, then
softmax, after the same EXIF rotation and RGB conversion as training, and streams one
CSV or JSON-lines row per file (the top-k classes, or why the file could not be read).
On a folder written by ``finetune export`` it runs ``model.onnx`` (or ``model.int8.onnx``)
with ONNX Runtime instead (onnx_model.py), without importing torch.

Heavy libraries are imported inside the functions so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from . import onnx_model
from .errors import report
from .saved import InferenceError, Saved, load_saved
from .util import first_line, positive_int


def add_predict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="a finished run's output folder")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders (recursive)")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes listed per image (default: 5)")
    parser.add_argument(
        "--format", choices=("csv", "jsonl"), default=None,
        help="output format (default: jsonl when --output ends in .jsonl, else csv)",
    )
    parser.add_argument("--output", default=None, help="write here instead of to stdout")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--int8", action="store_true", help="with a folder from `finetune export --quantize int8`: run model.int8.onnx")


def collect_inputs(inputs: list[str], is_junk=None) -> list[tuple[str, str | None]]:
    """(path, problem) for every file to label, in a deterministic order.

    Folders are walked recursively, sorted by path components; junk files and folders
    are skipped silently; a named path that does not exist is a problem, not an error.
    ``is_junk``: the junk rule, by default the data package's (which imports torch).
    """
    if is_junk is None:
        from .data import is_junk  # the one definition of junk, shared with the training data report

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
                dirs[:] = [d for d in dirs if not is_junk(d, folder=True)]
                files += [os.path.join(root, n) for n in names if not is_junk(n)]
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


def preprocess(saved: Saved | onnx_model.OnnxClassifier, path: str):
    """One image file → the model's input tensor (1×3×H×W), as the pipeline would make it."""
    if isinstance(saved, onnx_model.OnnxClassifier):
        return saved.preprocessor([onnx_model.read_image(path)])
    from .data import open_image, to_rgb

    image = to_rgb(open_image(path))
    # One image at a time: a batch of full-size photos could take gigabytes; the
    # processed tensors are small.
    return saved.processor(images=[image], return_tensors="pt")["pixel_values"]


def label_pixels(saved: Saved | onnx_model.OnnxClassifier, pixels, k: int) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image of a batch (a list of 1×3×H×W inputs)."""
    if isinstance(saved, onnx_model.OnnxClassifier):
        import numpy as np

        probs = saved.probabilities(np.concatenate(pixels))
        # Stable sort of the negated probabilities: ties keep the lower index first, as topk does.
        best = np.argsort(-probs, axis=-1, kind="stable")[:, : min(k, probs.shape[-1])]
        return [[(saved.class_names[int(i)], float(p[i])) for i in row] for p, row in zip(probs, best)]
    import torch

    pixels = torch.cat(pixels)
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
    fmt = args.format or ("jsonl" if (args.output or "").endswith(".jsonl") else "csv")
    exported = onnx_model.is_export(args.output_dir)
    if args.int8 and not exported:
        return report(f"--int8: '{args.output_dir}' is not an exported folder; run `finetune export OUTPUT_DIR --quantize int8` and pass its folder")
    try:
        saved = onnx_model.load_export(args.output_dir, int8=args.int8) if exported else load_saved(args.output_dir)
    except InferenceError as err:
        return report(str(err))
    items = collect_inputs(args.inputs, onnx_model.is_junk if exported else None)
    if not items:
        return report(f"no files found in {', '.join(args.inputs)}; name image files or folders that hold some")
    k = min(args.top_k, len(saved.class_names))
    try:
        stream = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    except OSError as err:
        return report(f"--output: cannot write '{args.output}' ({err.strerror}); check the folder exists")
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
            tops = iter(label_pixels(saved, ok, k) if ok else [])
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
        return report(f"none of the {failed} file(s) could be labelled (see the warnings above); name image files")
    print(
        f"finetune: labelled {labelled} image(s)"
        + (f"; {failed} file(s) could not be read (see the 'error' {'field' if fmt == 'jsonl' else 'column'})" if failed else "")
        + (f"; written to {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0
