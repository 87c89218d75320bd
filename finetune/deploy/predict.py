"""`finetune predict`: label image files with a saved model, as ``pipeline("image-classification")`` would.

``finetune predict OUTPUT_DIR IMAGE_OR_FOLDER...`` runs the saved image processor, then
softmax, after the same EXIF rotation and RGB conversion as training, and streams one
CSV or JSON-lines row per file (the top-k classes, with ``--min-probability`` whether it is
abstained on, or why the file could not be read). ``--tta`` averages the softmax over
test-time views of each image (by default those the run's final scores used,
``evaluation.tta`` in its recipe.json); the abstention reads that average.
A multi-label model (config ``problem_type``) gets one sigmoid per class instead, and a row
lists every class whose probability reaches that class's threshold (saved in config.json,
tuned on the validation piece), most probable first; ``--min-probability`` replaces all the
thresholds with one value, ``--top-k`` caps the count, ``--tta`` averages the sigmoids.
On a folder written by ``finetune export`` it runs ``model.onnx`` (or ``model.int8.onnx``)
with ONNX Runtime instead (:mod:`finetune.deploy.onnx_classifier`), without importing torch.

Heavy libraries are imported inside the functions so that ``--help`` stays fast.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import IO, Any, Iterator

from finetune.deploy import onnx_classifier as onnx_model
from finetune.deploy.saved_run import Saved
from finetune.utils.images import is_junk


def collect_inputs(inputs: list[str]) -> list[tuple[str, str | None]]:
    """(path, problem) for every file to label, in a deterministic order.

    Folders are walked recursively, sorted by path components; junk files and folders
    are skipped silently; a named path that does not exist is a problem, not an error.
    """
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


#: What separates a multi-label row's classes (and their probabilities) in a CSV cell: the
#: separator a CSV label column of training data uses by default
#: (``finetune.data.multi_label.DEFAULT_SEPARATOR``, whose package imports torch).
LABEL_SEPARATOR = ";"


class Writer:
    """Streams one row per input: the top-k classes and probabilities, or the error.

    With ``min_probability``, an image whose top probability is below it is marked abstained
    (an ``abstained`` column or field), its top classes still listed: the model's answer is
    there, and the caller decides what to do with an unsure one.

    ``multi_label``: each row holds the image's labels (every class at or above its
    threshold, most probable first), any number of them: in CSV two cells, ``labels`` and
    ``probabilities``, each joined by :data:`LABEL_SEPARATOR`; in JSON lines the same
    ``predictions`` list as single-label rows. No abstention: an image without a label has an
    empty list.
    """

    def __init__(
        self, stream: IO[str], fmt: str, k: int | None, min_probability: float | None = None, multi_label: bool = False
    ) -> None:
        self.stream, self.fmt, self.k, self.min_probability = stream, fmt, k, min_probability
        self.multi_label = multi_label
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            if multi_label:
                self.csv.writerow(["path", "labels", "probabilities", "error"])
                return
            header = ["path"]
            for i in range(1, k + 1):
                header += [f"label_{i}", f"probability_{i}"]
            self.csv.writerow(header + (["abstained"] if min_probability is not None else []) + ["error"])

    def row(self, path: str, top: list[tuple[str, float]] | None = None, error: str | None = None) -> bool:
        """Write one row; returns whether the image was abstained on (multi-label: whether it
        got no label)."""
        if self.multi_label:
            return self._labels_row(path, top, error)
        judged = self.min_probability is not None and error is None
        abstained = bool(judged and top and top[0][1] < self.min_probability)
        if self.fmt == "jsonl":
            record: dict[str, Any] = {"path": path}
            if error is None:
                record["predictions"] = [{"label": label, "probability": round(p, 6)} for label, p in top or []]
                if judged:
                    record["abstained"] = abstained
            else:
                record["error"] = error
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            cells = [path]
            for label, p in top or []:
                cells += [label, f"{p:.6f}"]
            cells += [""] * (1 + 2 * self.k - len(cells))
            if self.min_probability is not None:
                cells.append(("true" if abstained else "false") if judged else "")
            self.csv.writerow(cells + [error or ""])
        self.stream.flush()
        return abstained

    def _labels_row(self, path: str, labels: list[tuple[str, float]] | None, error: str | None) -> bool:
        labels = labels or []
        if self.fmt == "jsonl":
            record: dict[str, Any] = {"path": path}
            if error is None:
                record["predictions"] = [{"label": label, "probability": round(p, 6)} for label, p in labels]
            else:
                record["error"] = error
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            names = LABEL_SEPARATOR.join(label for label, _ in labels)
            probs = LABEL_SEPARATOR.join(f"{p:.6f}" for _, p in labels)
            self.csv.writerow([path, names, probs, error or ""])
        self.stream.flush()
        return error is None and not labels


def preprocess(saved: Saved | onnx_model.OnnxClassifier, path: str):
    """One image file → the model's input tensor (1×3×H×W), as the pipeline would make it."""
    if isinstance(saved, onnx_model.OnnxClassifier):
        return saved.preprocessor([onnx_model.read_image(path)])
    from finetune.data import open_image, to_rgb

    image = to_rgb(open_image(path))
    # One image at a time: a batch of full-size photos could take gigabytes; the
    # processed tensors are small.
    return saved.processor(images=[image], return_tensors="pt")["pixel_values"]


def label_pixels(
    saved: Saved | onnx_model.OnnxClassifier, pixels, k: int | None, tta: str = "none",
    min_probability: float | None = None,
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image of a batch (a list of 1×3×H×W inputs);
    with ``tta`` (a mode of ``evaluation.tta``, PyTorch only) the probabilities are the
    softmax averaged over its views. A multi-label model: every class whose sigmoid
    probability (averaged over the views) reaches its threshold, or ``min_probability`` in
    place of all thresholds, most probable first, at most ``k`` (None: all)."""
    if isinstance(saved, onnx_model.OnnxClassifier):
        import numpy as np

        probs = saved.probabilities(np.concatenate(pixels))
        if saved.multi_label:
            return [row[:k] for row in onnx_model.above_thresholds(probs, saved.class_names, saved.thresholds, min_probability)]
        # Stable sort of the negated probabilities: ties keep the lower index first, as topk does.
        best = np.argsort(-probs, axis=-1, kind="stable")[:, : min(k, probs.shape[-1])]
        return [[(saved.class_names[int(i)], float(p[i])) for i in row] for p, row in zip(probs, best)]
    import torch

    from finetune.evaluation.tta import SIGMOID, SOFTMAX, TestTimeAugmentation

    pixels = torch.cat(pixels)
    with torch.inference_mode():
        dtype = next(saved.model.parameters()).dtype

        def forward(batch: torch.Tensor) -> torch.Tensor:
            return saved.model(pixel_values=batch).logits.float()

        # Mode "none" is the one view itself: the same numbers as without the option.
        activation = SIGMOID if saved.multi_label else SOFTMAX
        probs = TestTimeAugmentation(tta, activation).probabilities(forward, pixels.to(saved.device, dtype))
        if saved.multi_label:
            rows = onnx_model.above_thresholds(probs.cpu().numpy(), saved.class_names, saved.thresholds, min_probability)
            return [row[:k] for row in rows]
        top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [
        [(saved.class_names[int(i)], float(p)) for i, p in zip(indices, values)]
        for indices, values in zip(top.indices.tolist(), top.values.tolist())
    ]


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


