"""An exported folder (``model.onnx`` + its configs) run with ONNX Runtime, with numpy + PIL preprocessing and no torch.

``finetune export`` writes ``model.onnx`` (optionally ``model.int8.onnx``) next to the run's
``config.json`` (class names, and a timm model's preprocessing) and, for Hugging Face image
processors, ``preprocessor_config.json``. This module reads such a folder back and labels
images with ONNX Runtime on numpy arrays (a softmax over the classes; for a multi-label
config, one sigmoid per class and the per-class thresholds saved in config.json): it
imports neither torch nor transformers, so the
folder runs where only ``onnxruntime``, numpy and Pillow are installed (``finetune
predict`` on an exported folder does exactly that).

The preprocessing follows the saved processor, as its PIL implementation computes it:
Hugging Face processors (resize to a size or a shortest edge, ConvNeXt's ``crop_pct``,
centre crop, rescale, normalise) and timm's evaluation transform (shortest-edge resize to
``size / crop_pct``, centre crop, normalise). A test checks it against the processors
themselves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from finetune.utils import extras
from finetune.utils.errors import InferenceError

MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "export_report.json"

# PIL's resampling filters by the names timm uses.
_TIMM_INTERPOLATION = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an exported model (what ``finetune export`` writes)."""
    return (Path(folder) / MODEL_FILE).is_file()


def require_onnxruntime():
    """The onnxruntime module, or a one-line error naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise InferenceError(f"onnxruntime is not installed; {extras.hint('export')}") from None
    return onnxruntime


# --------------------------------------------------------------------------- images


def read_image(value: str | dict[str, Any]):
    """A path or an undecoded ``datasets`` Image value → upright 8-bit RGB PIL image, exactly
    as training reads it (``images.open_image`` then ``images.to_rgb``; that module imports
    no torch, which an exported model must run without)."""
    from finetune.utils.images import open_image, to_rgb

    return to_rgb(open_image(value))


# ---------------------------------------------------------------------- preprocessing


def _shortest_edge_size(width: int, height: int, short: int, longest: int | None = None) -> tuple[int, int]:
    """(width, height) with the shorter side ``short`` and the ratio kept (the longer side
    rounded down), capped at ``longest``: transformers' and torchvision's rule."""
    if width <= height:
        new_w, new_h = short, int(short * height / width)
        if longest is not None and new_h > longest:
            new_w, new_h = int(longest * new_w / new_h), longest
    else:
        new_h, new_w = short, int(short * width / height)
        if longest is not None and new_w > longest:
            new_h, new_w = int(longest * new_h / new_w), longest
    return new_w, new_h


@dataclass
class Preprocessor:
    """Resize, centre crop and normalisation of one model, as its saved processor does them."""

    #: Resize step: ("exact", (w, h)) or ("shortest", short, longest_or_None), or None.
    resize: tuple | None
    resample: int
    #: Centre crop (height, width), or None.
    crop: tuple[int, int] | None
    #: "hf": top/left = (size - crop) // 2 (transformers); "timm": rounded (torchvision).
    crop_rounding: str
    scale: float
    mean: np.ndarray
    std: np.ndarray
    #: Where the settings came from, for the export report.
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_folder(cls, folder: str | Path) -> Preprocessor:
        folder = Path(folder)
        processor_file = folder / "preprocessor_config.json"
        if processor_file.is_file():
            return cls.from_hf(json.loads(processor_file.read_text()), str(processor_file.name))
        config = json.loads((folder / "config.json").read_text())
        if isinstance(config.get("pretrained_cfg"), dict):
            return cls.from_timm(config["pretrained_cfg"])
        raise InferenceError(
            f"'{folder}' has no preprocessor_config.json and its config.json no timm pretrained_cfg; "
            "export the model again with `finetune export`"
        )

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], source: str = "preprocessor_config.json") -> Preprocessor:
        kind = str(cfg.get("image_processor_type", ""))
        # Settings this implementation does not apply: refuse rather than compute something else.
        unsupported = [k for k in ("rescale_offset", "do_pad", "do_reduce_labels") if cfg.get(k)]
        if unsupported:
            raise InferenceError(
                f"{source}: {kind or 'the image processor'} uses {', '.join(unsupported)}, which the ONNX runtime's "
                "preprocessing does not implement; use the PyTorch model (`finetune predict` on the run's folder)"
            )
        size = cfg.get("size") or {}
        resize: tuple | None = None
        crop = None
        if cfg.get("do_resize", True):
            if kind.startswith("ConvNext") and "shortest_edge" in size:
                # ConvNeXt: below 384 px, resize to shortest_edge / crop_pct then crop; warp above.
                edge = int(size["shortest_edge"])
                if edge < 384:
                    resize = ("shortest", int(edge / float(cfg.get("crop_pct") or 224 / 256)), None)
                    crop = (edge, edge)
                else:
                    resize = ("exact", (edge, edge))
            elif "height" in size and "width" in size:
                resize = ("exact", (int(size["width"]), int(size["height"])))
            elif "shortest_edge" in size:
                resize = ("shortest", int(size["shortest_edge"]), size.get("longest_edge"))
            else:
                raise InferenceError(f"{source}: image size {size} is not supported by the ONNX runtime's preprocessing")
        if cfg.get("do_center_crop") and cfg.get("crop_size"):
            crop_size = cfg["crop_size"]
            crop = (int(crop_size["height"]), int(crop_size["width"]))
        mean = cfg.get("image_mean") if cfg.get("do_normalize", True) else [0.0, 0.0, 0.0]
        std = cfg.get("image_std") if cfg.get("do_normalize", True) else [1.0, 1.0, 1.0]
        return cls(
            resize=resize,
            resample=int(cfg.get("resample", 2)),
            crop=crop,
            crop_rounding="hf",
            scale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0,
            mean=np.asarray(mean or [0.5] * 3, dtype=np.float32),
            std=np.asarray(std or [0.5] * 3, dtype=np.float32),
            source=f"{source} ({kind or 'image processor'})",
        )

    @classmethod
    def from_timm(cls, cfg: dict[str, Any]) -> Preprocessor:
        """timm's evaluation transform (``resolve_data_config`` + ``transforms_imagenet_eval``)."""
        _, height, width = cfg.get("input_size") or (3, 224, 224)
        crop_pct = float(cfg.get("crop_pct") or 0.875)
        mode = cfg.get("crop_mode") or "center"
        interpolation = cfg.get("interpolation") or "bicubic"
        if interpolation not in _TIMM_INTERPOLATION:
            raise InferenceError(f"config.json: timm interpolation '{interpolation}' is not supported by the ONNX runtime's preprocessing")
        scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
        if mode == "squash":
            resize: tuple = ("exact", (scale[1], scale[0]))
        elif mode == "center" and scale[0] == scale[1]:
            resize = ("shortest", scale[0], None)
        else:
            raise InferenceError(
                f"config.json: timm crop_mode '{mode}' with input size {height}x{width} is not supported by the ONNX "
                "runtime's preprocessing"
            )
        return cls(
            resize=resize,
            resample=_TIMM_INTERPOLATION[interpolation],
            crop=(int(height), int(width)),
            crop_rounding="timm",
            scale=1 / 255,
            mean=np.asarray(cfg.get("mean") or (0.485, 0.456, 0.406), dtype=np.float32),
            std=np.asarray(cfg.get("std") or (0.229, 0.224, 0.225), dtype=np.float32),
            source="config.json (timm pretrained_cfg)",
        )

    def geometry(self, image):
        """The resized and cropped RGB PIL image (the pixels the model sees, before scaling)."""
        if self.resize is not None:
            if self.resize[0] == "exact":
                target = self.resize[1]
            else:
                target = _shortest_edge_size(image.width, image.height, self.resize[1], self.resize[2])
            if target != image.size:
                image = image.resize(target, resample=self.resample)
        if self.crop is not None:
            height, width = self.crop
            if image.height < height or image.width < width:
                raise ValueError(f"image of {image.width}x{image.height} is smaller than the {width}x{height} crop")
            if self.crop_rounding == "timm":
                top, left = int(round((image.height - height) / 2.0)), int(round((image.width - width) / 2.0))
            else:
                top, left = (image.height - height) // 2, (image.width - width) // 2
            image = image.crop((left, top, left + width, top + height))
        return image

    def __call__(self, images: Iterable) -> np.ndarray:
        """RGB PIL images → the model's float32 N×3×H×W input."""
        arrays = []
        for image in images:
            arr = np.asarray(self.geometry(image), dtype=np.float32) * np.float32(self.scale)
            arr = (arr - self.mean) / self.std
            arrays.append(arr.transpose(2, 0, 1))
        return np.ascontiguousarray(np.stack(arrays).astype(np.float32, copy=False))


# ------------------------------------------------------------------------------ model


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + e^−x), without overflow for large negative logits."""
    out = np.empty_like(logits, dtype=np.float32)
    positive = logits >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-logits[positive]))
    e = np.exp(logits[~positive])
    out[~positive] = e / (1.0 + e)
    return out


# What finetune.data.multi_label says about a config, read here from config.json as a dict:
# that module's package imports torch, which this runner must not (a test checks the two agree).
#: A multi-label model's ``problem_type``.
MULTI_LABEL_PROBLEM = "multi_label_classification"
#: Where the per-class decision thresholds are, by class name.
THRESHOLDS_KEY = "label_thresholds"
#: The int8 model's own thresholds, tuned on the same validation piece from its probabilities
#: (``finetune export --quantize int8``); the int8 runner prefers them.
INT8_THRESHOLDS_KEY = "label_thresholds_int8"
#: A class's threshold when none was saved.
DEFAULT_THRESHOLD = 0.5


def is_multi_label(config: dict[str, Any]) -> bool:
    """Whether config.json (as a dict) describes a multi-label model."""
    return config.get("problem_type") == MULTI_LABEL_PROBLEM


def thresholds(config: dict[str, Any], names: list[str], int8: bool = False) -> np.ndarray:
    """The per-class decision thresholds of config.json, in ``names``' order (``int8``: the
    int8 model's own, where the export tuned them)."""
    stored = {**(config.get(THRESHOLDS_KEY) or {}), **((config.get(INT8_THRESHOLDS_KEY) or {}) if int8 else {})}
    return np.asarray([float(stored.get(name, DEFAULT_THRESHOLD)) for name in names], dtype=np.float64)


def session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session for one model file (``threads``: intra-op threads, None: ORT's choice)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own exception types for a bad file
        raise InferenceError(f"cannot load '{path}' with ONNX Runtime ({str(err).strip().splitlines()[0]}); export again") from None


@dataclass
class OnnxClassifier:
    """An exported folder, ready to label images."""

    path: Path
    model_file: Path
    session: Any
    preprocessor: Preprocessor
    class_names: list[str]
    #: A multi-label model (config.json's ``problem_type``): one sigmoid per class.
    multi_label: bool = False
    #: Its per-class decision thresholds (index order); None: single-label.
    thresholds: np.ndarray | None = None

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        name = self.session.get_inputs()[0].name
        return np.asarray(self.session.run(None, {name: pixels.astype(np.float32, copy=False)})[0], dtype=np.float32)

    def activation(self, logits: np.ndarray) -> np.ndarray:
        """Logits → probabilities: the softmax, or for a multi-label model the sigmoid of each class."""
        return sigmoid(logits) if self.multi_label else softmax(logits)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return self.activation(self.logits(pixels))

    def labels(self, pixels: np.ndarray, minimum: float | None = None) -> list[list[tuple[str, float]]]:
        """A multi-label model's answer for each image: every class whose probability reaches
        its threshold (or ``minimum``, in place of all thresholds), most probable first."""
        return above_thresholds(self.probabilities(pixels), self.class_names, self.thresholds, minimum)


def above_thresholds(
    probs: np.ndarray, names: list[str], limits: np.ndarray | None, minimum: float | None = None
) -> list[list[tuple[str, float]]]:
    """For each row of N × C sigmoid probabilities: (class name, probability) of every class at
    or above its threshold in ``limits`` (``minimum`` replaces them all when given), sorted by
    probability, highest first (ties: the lower class index first)."""
    probs = np.asarray(probs, dtype=np.float64)
    bound = np.full(probs.shape[-1], minimum, dtype=np.float64) if minimum is not None else np.asarray(limits)
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")
        out.append([(names[int(i)], float(row[i])) for i in order if row[i] >= bound[i]])
    return out


def class_names(folder: str | Path) -> list[str]:
    """The class names of config.json, in index order, as transformers reads them: a timm
    model's ``label_names`` list (its config writes no id2label), else ``id2label``."""
    config = json.loads((Path(folder) / "config.json").read_text())
    if config.get("model_type") == "timm_wrapper" and isinstance(config.get("label_names"), list):
        return [str(name) for name in config["label_names"]]
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    if not id2label:
        raise InferenceError(f"{folder}/config.json: no id2label; export the model again with `finetune export`")
    return [id2label.get(i, str(i)) for i in range(max(id2label) + 1)]


def load_export(folder: str | Path, int8: bool = False, threads: int | None = None) -> OnnxClassifier:
    """The exported model in ``folder`` (the int8 one when ``int8``)."""
    folder = Path(folder)
    model_file = folder / (INT8_FILE if int8 else MODEL_FILE)
    if not model_file.is_file():
        raise InferenceError(f"'{folder}' holds no {model_file.name}; run `finetune export` for it first")
    if not (folder / "config.json").is_file():
        raise InferenceError(f"'{folder}' holds {model_file.name} but no config.json; export the model again")
    config = json.loads((folder / "config.json").read_text())
    names = class_names(folder)
    multi = is_multi_label(config)
    return OnnxClassifier(
        folder, model_file, session(model_file, threads), Preprocessor.from_folder(folder), names,
        multi, thresholds(config, names, int8) if multi else None,
    )
