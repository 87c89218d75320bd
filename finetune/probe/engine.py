"""Which engine runs the frozen backbone's one feature pass: PyTorch, or ONNX Runtime on a CPU.

A cached-feature probe spends most of its time in one inference pass of a frozen model, and
on a CPU ONNX Runtime runs that pass faster than eager PyTorch (even channels-last), for
convolutional models and ViTs alike, with the same features to float rounding. The model is
exported once per run, to memory, by the TorchScript exporter: the dynamo exporter takes
longer than the pass it would speed up. (bench/README.md has the figures.)

``model.feature_runtime`` chooses:

- ``torch``: PyTorch, as training would run the model (and with its autocast, if any);
- ``onnxruntime``: ONNX Runtime, in fp32; a run on another device, a missing
  ``onnxruntime`` (the ``export`` extra) or an export that fails stops the run with the
  reason;
- ``auto`` (default): ONNX Runtime on a CPU in fp32 when it is installed and the split
  has at least :data:`AUTO_MIN_IMAGES` images, otherwise PyTorch; when the export fails or
  the check below fails, the log says why and PyTorch runs the pass (so for a model of 2 GiB
  or more, which an in-memory graph cannot hold: protobuf's limit).

Every ONNX Runtime session is checked before it is used: on the first batch of the first
split it runs, its features must match PyTorch's within ``rtol`` 1e-3 / ``atol`` 1e-4.
The exported graph has a fixed batch size, the pass's (static shapes run faster than a
dynamic batch); a last, shorter batch is padded with zeros and the padding's
rows dropped. That is exact because the frozen model runs in eval mode, where no layer
mixes the images of a batch.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from typing import TYPE_CHECKING, Any, Literal

from finetune.utils import extras
from finetune.utils.errors import first_line

if TYPE_CHECKING:  # torch is imported where it is used: recipe checks import this module
    import torch
    from torch import nn

logger = logging.getLogger("finetune")

Runtime = Literal["auto", "torch", "onnxruntime"]
RUNTIMES = ("auto", "torch", "onnxruntime")

#: ``auto`` exports only for a split this large. The export is a fixed cost and ONNX Runtime
#: saves a little on each image, so the export pays only on a split of some hundreds of
#: images for the smallest built-in model, EfficientNet-Lite0 at 96 px; larger models save
#: more per image and pay back sooner. This threshold leaves a margin over the smallest.
AUTO_MIN_IMAGES = 1000
#: The agreement asked of ONNX Runtime's features with PyTorch's on the first batch.
RTOL, ATOL = 1e-3, 1e-4
#: Protobuf's limit on one serialised message: the largest graph exported to memory.
PROTOBUF_LIMIT = 2**31
#: Opset of the exported graph (the one ``finetune export`` uses by default).
OPSET = 18


class RuntimeProblem(Exception):
    """Why ONNX Runtime cannot run this pass (the caller decides: fall back or stop)."""


class OnnxFeatures:
    """ONNX Runtime's session for one model: features of a batch of normalised pixels."""

    def __init__(self, session: Any, batch_size: int, export_seconds: float) -> None:
        self.session, self.batch_size, self.export_seconds = session, batch_size, export_seconds
        self.input_name = session.get_inputs()[0].name

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        n = pixels.shape[0]
        array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        if n < self.batch_size:  # the graph's batch is fixed: pad, then drop the padding's rows
            import numpy as np

            array = np.concatenate([array, np.zeros((self.batch_size - n, *array.shape[1:]), array.dtype)])
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(out[:n])


def build(model: nn.Module, head: nn.Linear, example: torch.Tensor, batch_size: int) -> OnnxFeatures:
    """Export ``model`` (up to its head's input) for batches of ``batch_size`` shaped like
    ``example`` and open an ONNX Runtime session on this process's torch threads."""
    problem = extras.problem("export", ("onnxruntime", "onnx"))
    if problem:
        raise RuntimeProblem(problem)
    import onnxruntime as ort
    import torch

    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if size >= PROTOBUF_LIMIT:
        raise RuntimeProblem(f"the model's {size / 2**30:.1f} GiB exceed the 2 GiB that an ONNX graph held in memory can hold")

    class Features(torch.nn.Module):
        """The model, returning its head's input (the features) instead of its logits."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.captured: torch.Tensor | None = None

        def keep(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.captured = args[0]

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            handle = head.register_forward_hook(self.keep)
            try:
                self.model(pixel_values=pixel_values)
            finally:
                handle.remove()
            return self.captured

    shape = (batch_size, *example.shape[1:])
    buffer = io.BytesIO()
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        # Outside inference mode: tracing for export records ops on ordinary tensors.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo's, which takes
            # several times longer here; the test of this module fails when it is removed.
            warnings.simplefilter("ignore")
            dummy = torch.zeros(shape, dtype=torch.float32)
            torch.onnx.export(
                Features().eval(), (dummy,), buffer, dynamo=False, opset_version=OPSET,
                input_names=["pixel_values"], output_names=["features"],
            )
    except Exception as err:  # noqa: BLE001 - any tracing or export failure is a reason to fall back
        raise RuntimeProblem(f"export failed: {type(err).__name__}: {first_line(err)}"[:300]) from err
    finally:
        model.train(was_training)
    options = ort.SessionOptions()
    # The process's share of the cores (finetune.utils.threads has set torch's count to it).
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001
        raise RuntimeProblem(f"ONNX Runtime cannot load the export: {type(err).__name__}: {first_line(err)}"[:300]) from err
    return OnnxFeatures(session, batch_size, time.perf_counter() - start)


class FeatureRuntime:
    """The choice for one run, kept across its splits: the session is built at most once.

    ``runner`` is None while PyTorch runs the pass; ``chosen`` says which engine ran and why,
    for the log.
    """

    def __init__(self, setting: Runtime = "auto") -> None:
        if setting not in RUNTIMES:
            raise ValueError(f"feature runtime must be one of {RUNTIMES}, got {setting!r}")
        self.setting = setting
        self.runner: OnnxFeatures | None = None
        self.decided = setting == "torch"
        self.chosen = "torch (model.feature_runtime torch)" if self.decided else ""
        self.note = ""

    def wants_onnx(self, device: torch.device, images: int, autocast: bool) -> bool:
        """Whether to try ONNX Runtime for a split of ``images`` rows (before its first batch)."""
        if self.decided:
            return False
        if self.setting == "onnxruntime":
            if device.type != "cpu":
                from finetune.models.classifier import ModelError

                raise ModelError(
                    f"model.feature_runtime 'onnxruntime' runs the feature pass on the CPU, but this run is on "
                    f"{device.type}; set it to 'auto' or 'torch'"
                )
            if autocast:
                self.note = "; fp32, where training.bf16/fp16 would have run the backbone in lower precision"
            return True
        if device.type != "cpu":
            return self._settle(f"torch (auto: the run is on {device.type})")
        if autocast:
            return self._settle("torch (auto: training.bf16/fp16 runs the backbone in lower precision)")
        problem = extras.problem("export", ("onnxruntime", "onnx"))
        if problem:
            return self._settle(f"torch (auto: {problem})")
        if images < AUTO_MIN_IMAGES:
            self.chosen = f"torch (auto: {images} images, under the {AUTO_MIN_IMAGES} for which ONNX Runtime pays)"
            return False  # a larger split later may still switch
        return True

    def _settle(self, why: str) -> bool:
        self.decided, self.chosen = True, why
        return False

    def start(self, model: nn.Module, head: nn.Linear, pixels: torch.Tensor, expected: torch.Tensor, batch_size: int) -> torch.Tensor | None:
        """Build the session and check it on the first batch (``expected``: PyTorch's features).
        Returns ONNX Runtime's features of that batch, or None when PyTorch goes on (auto)."""
        import torch

        from finetune.models.classifier import ModelError

        try:
            runner = build(model, head, pixels, batch_size)
            got, expected = runner(pixels), expected.float().cpu()
            if not torch.allclose(got, expected, rtol=RTOL, atol=ATOL):
                worst = (got - expected).abs().max().item()
                raise RuntimeProblem(
                    f"its features differ from PyTorch's by up to {worst:.2e} on the first batch "
                    f"(allowed: rtol {RTOL:g}, atol {ATOL:g})"
                )
        except RuntimeProblem as err:
            if self.setting == "onnxruntime":
                raise ModelError(
                    f"model.feature_runtime 'onnxruntime': {err}; set it to 'torch' (or 'auto', which falls back)"
                ) from err
            logger.warning("feature cache: ONNX Runtime not used (%s); PyTorch runs the pass", err)
            self._settle(f"torch (auto: ONNX Runtime {err})")
            return None
        self.runner, self.decided = runner, True
        self.chosen = (
            f"onnxruntime ({'model.feature_runtime onnxruntime' if self.setting == 'onnxruntime' else 'auto'}; "
            f"exported in {runner.export_seconds:.1f} s, checked against PyTorch{self.note})"
        )
        return got
