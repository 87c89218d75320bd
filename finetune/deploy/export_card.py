"""The exported folder's card (README.md): what was exported, how it was checked, and how its int8 model compared with fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.utils.files import write_text


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _views_line(run_tta: str, activation: str = "softmax") -> str:
    """The exported model scores one view per image; say what that means for the run's numbers."""
    if run_tta == "none":
        return "The model scores one view per image, as the run's own final scores did (no test-time augmentation)."
    return (
        f"The model scores one view per image: the test-time augmentation that the run's final scores used "
        f"(`evaluation.tta` `{run_tta}`, the {activation} averaged over several views) is not part of it, so its "
        f"scores are those of one view; `finetune predict` and `finetune eval` on the run's own folder apply it."
    )


def _multi_label_line(result: dict[str, Any]) -> list[str]:
    """How a multi-label export answers: sigmoids and the thresholds saved beside it."""
    if not result.get("multi_label"):
        return []
    return [
        "",
        "A multi-label model: each class has its own sigmoid, and an image gets every class whose probability "
        "reaches that class's threshold (`label_thresholds` in `config.json`, tuned on the run's validation piece; "
        "0.5 for a class without one), which `finetune predict` applies; `pipeline(\"image-classification\")` on "
        "the run's folder applies the sigmoid too (`problem_type` in `config.json`).",
    ]


def _int8_thresholds_lines(result: dict[str, Any]) -> list[str]:
    """A multi-label int8 model's own thresholds, and the micro F1 they give."""
    tuned, f1 = result.get("int8_thresholds"), result.get("f1_micro")
    if not tuned:
        return []
    if not tuned["tuned"]:
        return ["", f"int8 thresholds: {tuned['why']}."]
    line = (
        f"int8 has thresholds of its own (`{tuned['key']}` in `config.json`, which the int8 runner applies), tuned "
        f"on its probabilities for {tuned['on']} ({tuned['images']} images, {tuned['classes_tuned']} classes)"
    )
    if f1:
        line += (
            f"; micro F1 on the eval split: fp32 {f1['onnx_fp32']:.4f}, int8 at fp32's thresholds "
            f"{f1['onnx_int8_at_fp32_thresholds']:.4f}, int8 at its own {f1['onnx_int8']:.4f}"
        )
    return ["", line + "."]


def render(result: dict[str, Any]) -> str:
    check = result["check"]
    act = check.get("activation", "softmax")
    multi = bool(result.get("multi_label"))
    agreement = (
        f"label-set agreement at the thresholds {check['end_to_end_label_set_agreement']:.1%}" if multi
        else f"top-1 agreement {check['end_to_end_top1_agreement']:.1%}"
    )
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
        *_multi_label_line(result),
        "",
        _views_line(result.get("run_tta", "none"), act),
        "",
        "## Check",
        "",
        f"ONNX Runtime against PyTorch on the same {check['images']} eval images: max |Δ probability| ({act}) "
        f"{check[f'max_abs_{act}_diff']:.2e} (bound {check['bound']:g}), max |Δ logit| {check['max_abs_logit_diff']:.2e}. "
        f"With the ONNX runtime's own numpy/PIL preprocessing instead of the model's image processor: max |Δ probability| "
        f"{check[f'end_to_end_max_abs_{act}_diff']:.2e}, {agreement}.",
    ]
    if result.get("exporter_fallback_reason"):
        lines += ["", f"The dynamo exporter could not trace this model ({result['exporter_fallback_reason']})."]
    if "quantization" in result:
        metric = result.get("metric", "accuracy")
        shown, title = ("mAP", "mAP") if metric == "map" else (metric, metric.capitalize())
        quant, files, acc, lat = result["quantization"], result["files"], result[metric], result["latency_ms"]
        how = f"{quant['mode']} int8 quantization ({quant['format']}, weights {quant['weight_type']}"
        how += ", per channel" if quant["per_channel"] else ""
        how += f", activations {quant['activation_type']}"
        if quant["calibration_images"]:
            how += f", calibrated ({quant['calibration_method']}) on {quant['calibration_images']} seeded training images"
        lines += ["", "## int8", "", f"`model.int8.onnx`: {how}); {quant['why']}.", ""]
        if "onnx_int8" in acc:
            lines.append(f"{title} on {acc['split']} ({acc['images']} images), CPU latency (median, {lat['threads']} thread(s)):")
        else:
            lines.append(f"{title}: not measured, {acc['not_measured']}. CPU latency (median, {lat['threads']} thread(s)):")
        lines += [
            "",
            f"| | {shown} | file size | latency batch 1 | latency batch 32 |",
            "|---|---|---|---|---|",
        ]
        rows = (("PyTorch", "pytorch", None), ("ONNX fp32", "onnx_fp32", "model.onnx"), ("ONNX int8", "onnx_int8", "model.int8.onnx"))
        for label, key, file in rows:
            accuracy = f"{acc[key]:.4f}" if acc.get(key) is not None else "–"
            size = _mb(files[file]) if file else (_mb(result["pytorch_weights_bytes"]) if result.get("pytorch_weights_bytes") else "–")
            b1, b32 = lat["batch_1"][f"{key}_ms"], lat["batch_32"][f"{key}_ms"]
            lines.append(f"| {label} | {accuracy} | {size} | {b1:.2f} ms | {b32:.2f} ms |")
        versus = result.get("int8_vs_fp32")
        if versus:
            agree = versus.get("label_set_agreement", versus.get("top1_agreement"))
            what = "the same set of labels at the thresholds" if "label_set_agreement" in versus else "the same top class"
            lines += ["", f"int8 against fp32: {what} on {agree:.1%} of the images, mean |Δ probability| "
                          f"{versus[f'mean_abs_{act}_diff']:.2e}, max {versus[f'max_abs_{act}_diff']:.2e}."]
        lines += _int8_thresholds_lines(result)
        lines += [
            "",
            f"int8 / fp32: size {result['size_ratio_int8_to_fp32']:.2f}×, batch-1 latency "
            f"{result['latency_ratio_int8_to_fp32_batch_1']:.2f}×. Latencies depend on the machine and its load; "
            "the numbers above were measured by the export, on the machine that ran it.",
        ]
    return "\n".join(lines) + "\n"


def write_card(path: Path, result: dict[str, Any]) -> None:
    write_text(Path(path), render(result))
