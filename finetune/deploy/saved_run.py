"""A finished run's saved model, image processor and class names, loaded for `finetune eval` and `predict`."""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.recipe import TTA
from finetune.utils.errors import InferenceError, first_line

#: The choices of ``evaluation.tta`` and of the commands' ``--tta``.
TTA_MODES: tuple[str, ...] = typing.get_args(TTA)


@dataclass
class Saved:
    """A finished run's model, its image processor and its class names (index order)."""

    path: Path
    model: Any
    processor: Any
    class_names: list[str]
    device: Any
    #: The test-time augmentation the run's final scores used (its recipe's
    #: ``evaluation.tta``): what ``finetune eval`` and ``finetune predict`` apply by default.
    tta: str = "none"
    #: A multi-label model (config ``problem_type``): one sigmoid per class, and a label is
    #: given when its probability reaches its threshold (:attr:`thresholds`).
    multi_label: bool = False
    #: The per-class decision thresholds saved in its config.json (index order); a class
    #: without one has ``finetune.data.multi_label.DEFAULT_THRESHOLD``. None: single-label.
    thresholds: Any = None


def load_saved(output_dir: str | Path) -> Saved:
    """The model and processor that a run saved in ``output_dir``, in eval mode."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    path = Path(output_dir)
    if not path.is_dir():
        raise InferenceError(f"OUTPUT_DIR: no such folder '{output_dir}'; pass the output_dir of a finished run")
    if not (path / "config.json").is_file():
        raise InferenceError(
            f"OUTPUT_DIR: '{output_dir}' holds no saved model (config.json is missing); "
            "pass the output_dir of a finished run"
        )
    try:
        # local_files_only: a folder must never turn into a Hub lookup.
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModelForImageClassification.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise InferenceError(
            f"OUTPUT_DIR: cannot load the model saved in '{output_dir}' ({first_line(err)}); "
            "is the run finished (model.safetensors and preprocessor_config.json present)?"
        ) from None
    from finetune.data import multi_label

    config = model.config
    names = [str(config.id2label.get(i, i)) for i in range(config.num_labels)]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    multi = multi_label.is_multi_label(config)
    thresholds = multi_label.thresholds(config, names) if multi else None
    return Saved(path, model, processor, names, device, recorded_tta(path), multi, thresholds)


def recorded_tta(path: Path) -> str:
    """``evaluation.tta`` of the recipe.json that a run saved beside its model; "none" for a
    folder without one (a model saved by other tools) or from before the key existed."""
    try:
        recipe = json.loads((Path(path) / "recipe.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "none"
    evaluation = recipe.get("evaluation") if isinstance(recipe, dict) else None
    mode = evaluation.get("tta") if isinstance(evaluation, dict) else None
    return mode if mode in TTA_MODES else "none"


def choose_tta(saved: Any, asked: str | None, option: str = "--tta") -> str:
    """The views to score ``saved`` with: ``asked`` (the command's option), else what the run
    recorded. An exported ONNX folder scores one view: another mode is refused there."""
    from finetune.deploy.onnx_classifier import OnnxClassifier

    if isinstance(saved, OnnxClassifier):
        if asked not in (None, "none"):
            raise InferenceError(
                f"{option} {asked}: an exported ONNX model scores one view per image; pass the run's own output "
                "folder for test-time augmentation, or drop the option"
            )
        return "none"
    return asked if asked is not None else saved.tta
