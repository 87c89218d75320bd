"""`finetune eval OUTPUT_DIR --data DATASET [--split test]`: score a saved (or exported) model and write the report (multi-label models at their saved thresholds)."""

from __future__ import annotations

import argparse

from finetune.cli.common import add_tta, positive_int
from finetune.utils.errors import InferenceError, report

HELP = "score a saved model on a data set and write the report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument(
        "--report-dir", default=None,
        help="where eval_report.json and the PNGs go (default: OUTPUT_DIR/eval-<dataset>-<split>/)",
    )
    parser.add_argument("--int8", action="store_true", help="with a folder from `finetune export --quantize int8`: score model.int8.onnx")
    add_tta(parser)


def run(args: argparse.Namespace) -> int:
    from finetune.deploy.score import evaluate_saved

    try:
        result, target = evaluate_saved(
            args.output_dir, args.data, args.split, config=args.config, revision=args.revision,
            image_column=args.image_column, label_column=args.label_column,
            batch_size=args.batch_size, report_dir=args.report_dir, int8=args.int8, tta=args.tta,
        )
    except InferenceError as err:
        return report(str(err))
    bad = len(result["bad_files"])
    intervals = result.get("confidence_intervals", {})

    def shown(name: str) -> str:
        ci = intervals.get(name)
        return f"{result[name]:.4f}" + (f" ({intervals['level'] * 100:g}% CI {ci[0]:.4f}–{ci[1]:.4f})" if ci else "")

    ece = f"; ECE {result['ece']:.4f}" if "ece" in result else ""
    views = "" if result["tta"] == "none" else f", test-time augmentation {result['tta']}"
    if result.get("task") == "multi_label":
        scores = (
            f"mAP {shown('map')}, F1 micro {shown('f1_micro')}, F1 macro {shown('f1_macro')}, "
            f"exact match {shown('exact_match')} at the run's thresholds"
        )
    else:
        scores = f"accuracy {shown('accuracy')}, macro F1 {shown('macro_f1')}"
    print(
        f"eval: {scores} on "
        f"{result['num_images']} images of '{args.data}' (split {args.split}){views}{ece}"
        f"{f'; {bad} unreadable file(s) left out' if bad else ''}; report in {target}"
    )
    return 0
