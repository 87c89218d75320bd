"""A finished run's saved model, image processor and class names, loaded for `finetune eval` and `predict`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.utils.errors import InferenceError, first_line


@dataclass
class Saved:
    """A finished run's model, its image processor and its class names (index order)."""

    path: Path
    model: Any
    processor: Any
    class_names: list[str]
    device: Any


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
    config = model.config
    names = [str(config.id2label.get(i, i)) for i in range(config.num_labels)]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    return Saved(path, model, processor, names, device)
