"""`finetune predict OUTPUT_DIR IMAGE_OR_FOLDER...`: label image files with a saved (or exported) model, one CSV or JSON-lines row each."""

from __future__ import annotations

import argparse
import sys

from finetune.cli.common import add_tta, positive_int, probability
from finetune.deploy import onnx_classifier
from finetune.deploy.predict import LABEL_SEPARATOR, Writer, batches, collect_inputs, label_pixels, preprocess
from finetune.deploy.saved_run import choose_tta, load_saved
from finetune.utils.errors import InferenceError, first_line, report

HELP = "label images with a saved model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="a finished run's output folder")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders (recursive)")
    parser.add_argument(
        "--top-k", type=positive_int, default=None,
        help="classes listed per image (default: 5); for a multi-label model, at most this many of its labels "
        "(default: all at or above their thresholds)",
    )
    parser.add_argument(
        "--format", choices=("csv", "jsonl"), default=None,
        help="output format (default: jsonl when --output ends in .jsonl, else csv)",
    )
    parser.add_argument("--output", default=None, help="write here instead of to stdout")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--int8", action="store_true", help="with a folder from `finetune export --quantize int8`: run model.int8.onnx")
    parser.add_argument(
        "--min-probability", type=probability, default=None, metavar="P",
        help="mark an image abstained when its top probability is below P (its top classes still listed); "
        "the model card gives the P that keeps the eval split's accuracy at the recipe's level. For a multi-label "
        "model: list every class with probability at least P, in place of the per-class thresholds it was saved with",
    )
    add_tta(parser)


def run(args: argparse.Namespace) -> int:
    fmt = args.format or ("jsonl" if (args.output or "").endswith(".jsonl") else "csv")
    exported = onnx_classifier.is_export(args.output_dir)
    if args.int8 and not exported:
        return report(f"--int8: '{args.output_dir}' is not an exported folder; run `finetune export OUTPUT_DIR --quantize int8` and pass its folder")
    try:
        saved = onnx_classifier.load_export(args.output_dir, int8=args.int8) if exported else load_saved(args.output_dir)
        tta = choose_tta(saved, args.tta)
    except InferenceError as err:
        return report(str(err))
    items = collect_inputs(args.inputs)
    if not items:
        return report(f"no files found in {', '.join(args.inputs)}; name image files or folders that hold some")
    multi = bool(getattr(saved, "multi_label", False))
    if multi:
        k = min(args.top_k, len(saved.class_names)) if args.top_k is not None else None
        clash = [name for name in saved.class_names if LABEL_SEPARATOR in name]
        if fmt == "csv" and clash:
            return report(
                f"--format csv: class name '{clash[0]}' contains '{LABEL_SEPARATOR}', which separates an image's labels "
                "in a CSV cell; use --format jsonl (or --output FILE.jsonl)"
            )
    else:
        k = min(args.top_k if args.top_k is not None else 5, len(saved.class_names))
    try:
        stream = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    except OSError as err:
        return report(f"--output: cannot write '{args.output}' ({err.strerror}); check the folder exists")
    labelled = failed = abstained = 0
    try:
        writer = Writer(stream, fmt, k, args.min_probability, multi_label=multi)
        for chunk in batches(items, args.batch_size):
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
            tops = iter(label_pixels(saved, ok, k, tta, args.min_probability if multi else None) if ok else [])
            # Rows in input order, good and bad interleaved as they were named.
            for (path, _), tensor, problem in zip(chunk, tensors, problems):
                if tensor is None:
                    writer.row(path, error=problem)
                    failed += 1
                else:
                    abstained += writer.row(path, next(tops))
                    labelled += 1
    finally:
        if stream is not sys.stdout:
            stream.close()
    if not labelled:
        return report(f"none of the {failed} file(s) could be labelled (see the warnings above); name image files")
    where = "field" if fmt == "jsonl" else "column"
    if multi:
        bound = f"probability {args.min_probability:g}" if args.min_probability is not None else "its class's threshold"
        judged = f"; {abstained} of them got no label (none at or above {bound})"
    elif args.min_probability is not None:
        judged = (
            f"; abstained on {abstained} of them (top probability below {args.min_probability:g}; see the "
            f"'abstained' {where})"
        )
    else:
        judged = ""
    print(
        f"finetune: labelled {labelled} image(s)"
        + (" (multi-label: every class at or above its threshold)" if multi else "")
        + (f" with test-time augmentation {tta}" if tta != "none" else "")
        + judged
        + (f"; {failed} file(s) could not be read (see the 'error' {where})" if failed else "")
        + (f"; written to {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0
