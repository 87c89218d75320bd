"""int8 quantization of an exported ONNX model with ONNX Runtime's tools, and the CPU latency measurements the export report gives.

Convolutional models are quantized statically: weights int8 per output channel, and
activations uint8 with ranges calibrated on a seeded sample of training images (a
``CalibrationDataReader``), in the QOperator format (QLinearConv and friends, the kernels
that make int8 faster than fp32 on a CPU). Two settings decide the accuracy, as the
quickstart model (EfficientNet-Lite0 on digits) showed: ``reduce_range`` (7-bit weights),
because x86 CPUs without VNNI multiply uint8 by int8 in 16-bit sums that saturate, which
without it cost many points of accuracy; and percentile calibration (99.999th), which
ignores the rare extreme activations that stretch a MinMax range over the depthwise
convolutions' outputs, and narrowed the rest of the gap to fp32. Transformers are
quantized dynamically (int8 MatMul weights, activation ranges computed per batch at run
time): their activations (softmax inputs, GELU, LayerNorm outputs) have outliers that one
calibrated range per tensor clips, and their cost is in the MatMuls that dynamic
quantization covers.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

#: Ops whose presence marks a transformer (attention) graph: quantized dynamically.
_ATTENTION_OPS = {"Softmax", "Attention", "MultiHeadAttention"}
#: Calibration batch size: bounded memory for the calibrator's activation copies.
CALIBRATION_BATCH = 16
#: The activation range kept by calibration, in percent of the calibration values.
PERCENTILE = 99.999


@dataclass
class Quantization:
    """How the int8 model was made, for the report."""

    mode: str  # "static" or "dynamic"
    format: str  # "QOperator" or "QDQ"
    per_channel: bool
    weight_type: str
    activation_type: str
    calibration_images: int = 0
    calibration_method: str | None = None
    op_types: list[str] = field(default_factory=list)
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_mode(model_path: str | Path) -> tuple[str, str]:
    """"static" for convolutional graphs, "dynamic" for attention graphs; and why."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(model_path), load_external_data=False).graph.node}
    if ops & _ATTENTION_OPS:
        return "dynamic", f"attention ({', '.join(sorted(ops & _ATTENTION_OPS))}) in the graph: dynamic quantization"
    return "static", "no attention in the graph: static quantization calibrated on training images"


class _Batches:
    """ONNX Runtime's CalibrationDataReader over preprocessed calibration images."""

    def __init__(self, input_name: str, pixels: np.ndarray) -> None:
        self.input_name, self.pixels = input_name, pixels
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        # Batches of one size: ONNX Runtime's histogram calibrators stack the batches'
        # activations into one array (onnxruntime 1.32), which fails on a shorter last batch.
        size = max(d for d in range(1, CALIBRATION_BATCH + 1) if len(self.pixels) % d == 0)

        def batches() -> Iterator[dict[str, np.ndarray]]:
            for start in range(0, len(self.pixels), size):
                yield {self.input_name: self.pixels[start : start + size]}

        self._iter = batches()


def _as_reader(input_name: str, pixels: np.ndarray):
    """A ``CalibrationDataReader`` subclass instance (ONNX Runtime checks the type)."""
    from onnxruntime.quantization import CalibrationDataReader

    reader = type("CalibrationImages", (_Batches, CalibrationDataReader), {})
    return reader(input_name, pixels)


def _preprocess(model_path: Path, work: Path) -> Path:
    """ONNX Runtime's recommended step before quantizing: shape inference and graph
    optimisation (BatchNorm folded into the convolutions, so it is quantized with them)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "preprocessed.onnx"
    quant_pre_process(str(model_path), str(out), skip_symbolic_shape=False)
    return out


def quantize_int8(
    model_path: str | Path, out_path: str | Path, mode: str, calibration: np.ndarray | None, input_name: str
) -> Quantization:
    """Write the int8 version of ``model_path`` to ``out_path``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory(prefix="finetune-quantize-") as scratch:
        work = Path(scratch)
        prepared = _preprocess(Path(model_path), work)
        if mode == "dynamic":
            ops = ["MatMul", "Gemm"]
            quantize_dynamic(str(prepared), str(out_path), op_types_to_quantize=ops, per_channel=False, weight_type=QuantType.QInt8)
            return Quantization("dynamic", "QOperator", False, "int8", "uint8 (per batch, at run time)", op_types=ops)
        if calibration is None or len(calibration) == 0:
            raise ValueError("static quantization needs calibration images")
        ops = ["Conv", "MatMul", "Gemm", "Add", "Mul", "GlobalAveragePool", "AveragePool", "MaxPool", "Relu", "Clip"]
        quantize_static(
            str(prepared),
            str(out_path),
            _as_reader(input_name, calibration),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=ops,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": PERCENTILE},
        )
        return Quantization(
            "static", "QOperator", True, "int8 (7-bit range)", "uint8", calibration_images=len(calibration),
            calibration_method=f"percentile {PERCENTILE}", op_types=ops,
        )


# ------------------------------------------------------------------------------ latency


@dataclass(frozen=True)
class Timing:
    """Repetitions of one latency measurement."""

    warmup: int
    repeats: int


#: Batch size → repetitions: enough for a stable median on a busy machine, few enough for
#: an export to stay within a minute for small models.
TIMINGS = {1: Timing(warmup=5, repeats=30), 32: Timing(warmup=2, repeats=10)}


def median_ms(run: Callable[[], Any], timing: Timing) -> float:
    """The median wall time of ``run()`` in milliseconds, after warm-up calls."""
    for _ in range(timing.warmup):
        run()
    times = []
    for _ in range(timing.repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(times), 3)
