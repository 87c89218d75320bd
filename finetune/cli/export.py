"""`finetune export OUTPUT_DIR [--quantize int8]`: the saved model to ONNX (optionally int8), checked against PyTorch."""

from __future__ import annotations

import argparse

from finetune.cli.common import positive_int
from finetune.deploy.export import CALIBRATION_SIZE, DEFAULT_OPSET, FP32_BOUND, export
from finetune.deploy.onnx_classifier import MODEL_FILE, REPORT_FILE
from finetune.utils.errors import UserError, report

HELP = "export a saved model to ONNX (optionally int8), checked against PyTorch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="a finished run's output folder")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="the export format (default: onnx)")
    parser.add_argument("--quantize", choices=("int8",), default=None, help="also write an int8 model (model.int8.onnx) and compare it")
    parser.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument("--out", default=None, help="the export folder (default: OUTPUT_DIR/onnx)")
    parser.add_argument(
        "--calibration-data", default=None, metavar="FOLDER",
        help="a folder of images to calibrate int8 on instead of a sample of the training images, and to check "
        "on when the run's data set cannot be loaded",
    )
    parser.add_argument(
        "--calibration-size", type=positive_int, default=CALIBRATION_SIZE,
        help="training images (seeded sample) to calibrate int8 activations on (default: %(default)s)",
    )
    parser.add_argument(
        "--max-eval-images", type=positive_int, default=None,
        help="score int8 vs fp32 on a seeded class-balanced subset of the eval split of this size (default: all)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this export, for the report and the card."""
    import shlex

    parts = ["finetune", "export", args.output_dir]
    for option, value, default in (
        ("--quantize", args.quantize, None), ("--opset", args.opset, DEFAULT_OPSET), ("--out", args.out, None),
        ("--calibration-data", args.calibration_data, None), ("--calibration-size", args.calibration_size, CALIBRATION_SIZE),
        ("--max-eval-images", args.max_eval_images, None),
    ):
        if value != default:
            parts += [option, str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    try:
        result, target = export(
            args.output_dir, args.out, quantize=args.quantize, opset=args.opset,
            calibration_data=args.calibration_data, calibration_size=args.calibration_size,
            max_eval_images=args.max_eval_images, overwrite=args.overwrite, command=_command(args),
        )
    except UserError as err:
        return report(str(err))
    check = result["check"]
    act = check.get("activation", "softmax")
    line = (
        f"export: {target / MODEL_FILE} ({result['exporter']}); ONNX Runtime vs PyTorch on "
        f"{check['images']} images: max |Δ probability| {check[f'max_abs_{act}_diff']:.1e} (bound {FP32_BOUND:g})"
    )
    if "quantization" in result:
        metric = result.get("metric", "accuracy")
        acc = result[metric]
        if acc.get("onnx_int8") is not None and acc.get("onnx_fp32") is not None:
            line += f"; int8 {'mAP' if metric == 'map' else metric} {acc['onnx_int8']:.4f} vs fp32 {acc['onnx_fp32']:.4f}"
        line += f", {result['size_ratio_int8_to_fp32']:.2f}× the size, {result['latency_ratio_int8_to_fp32_batch_1']:.2f}× the batch-1 latency"
    print(line + f"; report in {target / REPORT_FILE}")
    return 0
