"""The exported folder's card (README.md): what was exported, how it was checked, and how its int8 model compared with fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.utils.files import write_text


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _views_line(run_tta: str) -> str:
    """The exported model scores one view per image; say what that means for the run's numbers."""
    if run_tta == "none":
        return "The model scores one view per image, as the run's own final scores did (no test-time augmentation)."
    return (
        f"The model scores one view per image: the test-time augmentation that the run's final scores used "
        f"(`evaluation.tta` `{run_tta}`, the softmax averaged over several views) is not part of it, so its "
        f"accuracy is that of one view; `finetune predict` and `finetune eval` on the run's own folder apply it."
    )


def render(result: dict[str, Any]) -> str:
    check = result["check"]
    lines = [
        "# Exported model (ONNX)",
        "",
        f"Exported from `{result['source']}` with `{result['command'] or 'finetune export'}`: "
        f"{result['exporter']}, opset {result['opset']}, input `pixel_values` (N×3×H×W float32, any batch size N), "
        f"output `logits` (N×{len(result['classes'])}). The class names are `id2label` in `config.json`; the "
        f"preprocessing is that of {check['preprocessing']}.",
        "",
        "Run it with ONNX Runtime, in a process without PyTorch (`finetune/onnx_model.py` needs only "
        "`onnxruntime`, numpy and Pillow):",
        "",
        "```bash",
        "finetune predict THIS_FOLDER images/        # add --int8 for model.int8.onnx",
        "finetune eval THIS_FOLDER --data DATASET --split test",
        "```",
        "",
        _views_line(result.get("run_tta", "none")),
        "",
        "## Check",
        "",
        f"ONNX Runtime against PyTorch on the same {check['images']} eval images: max |Δ probability| "
        f"{check['max_abs_softmax_diff']:.2e} (bound {check['bound']:g}), max |Δ logit| {check['max_abs_logit_diff']:.2e}. "
        f"With the ONNX runtime's own numpy/PIL preprocessing instead of the model's image processor: max |Δ probability| "
        f"{check['end_to_end_max_abs_softmax_diff']:.2e}, top-1 agreement {check['end_to_end_top1_agreement']:.1%}.",
    ]
    if result.get("exporter_fallback_reason"):
        lines += ["", f"The dynamo exporter could not trace this model ({result['exporter_fallback_reason']})."]
    if "quantization" in result:
        quant, files, acc, lat = result["quantization"], result["files"], result["accuracy"], result["latency_ms"]
        how = f"{quant['mode']} int8 quantization ({quant['format']}, weights {quant['weight_type']}"
        how += ", per channel" if quant["per_channel"] else ""
        how += f", activations {quant['activation_type']}"
        if quant["calibration_images"]:
            how += f", calibrated ({quant['calibration_method']}) on {quant['calibration_images']} seeded training images"
        lines += ["", "## int8", "", f"`model.int8.onnx`: {how}); {quant['why']}.", ""]
        if "onnx_int8" in acc:
            lines.append(f"Accuracy on {acc['split']} ({acc['images']} images), CPU latency (median, {lat['threads']} thread(s)):")
        else:
            lines.append(f"Accuracy: not measured, {acc['not_measured']}. CPU latency (median, {lat['threads']} thread(s)):")
        lines += [
            "",
            "| | accuracy | file size | latency batch 1 | latency batch 32 |",
            "|---|---|---|---|---|",
        ]
        rows = (("PyTorch", "pytorch", None), ("ONNX fp32", "onnx_fp32", "model.onnx"), ("ONNX int8", "onnx_int8", "model.int8.onnx"))
        for label, key, file in rows:
            accuracy = f"{acc[key]:.4f}" if key in acc else "–"
            size = _mb(files[file]) if file else (_mb(result["pytorch_weights_bytes"]) if result.get("pytorch_weights_bytes") else "–")
            b1, b32 = lat["batch_1"][f"{key}_ms"], lat["batch_32"][f"{key}_ms"]
            lines.append(f"| {label} | {accuracy} | {size} | {b1:.2f} ms | {b32:.2f} ms |")
        lines += [
            "",
            f"int8 / fp32: size {result['size_ratio_int8_to_fp32']:.2f}×, batch-1 latency "
            f"{result['latency_ratio_int8_to_fp32_batch_1']:.2f}×. Latencies depend on the machine and its load; "
            "the numbers above were measured by the export, on the machine that ran it.",
        ]
    return "\n".join(lines) + "\n"


def write_card(path: Path, result: dict[str, Any]) -> None:
    write_text(Path(path), render(result))
