"""Model: a pretrained classifier with a new head for the user's classes, and a strategy.

``AutoModelForImageClassification`` loads HF-native models (ViT, DeiT, ResNet, ConvNeXt,
Swin, BEiT, ...) and timm models through TimmWrapper; ``builtin:`` names resolve to local
checkpoints (builtin.py). Only head parameters may be re-initialised: anything else
missing from the checkpoint means the wrong model was named, and is an error. With
``model.from_scratch`` only the configuration is loaded, and every weight is drawn at random
(the no-pretraining baseline of a study).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from finetune.models import builtin, lora
from finetune.recipe import ModelConfig
from finetune.utils.errors import UserError, first_line
from finetune.utils.locations import looks_like_path

logger = logging.getLogger(__name__)


class ModelError(UserError, ValueError):
    """A problem with the model the recipe names; one line, with the fix."""


def _load_kwargs(cfg: ModelConfig) -> dict:
    return {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}


def resolve_name(name: str, key: str, fix: str, error: type[Exception]) -> str:
    """Where to load a model named by recipe ``key`` from: a built-in's cache folder, a local
    folder (``~`` expanded), or a Hub id. A missing local folder is named as such here, since
    the Hub client would only say that it is not a valid repo id; ``fix`` ends that line."""
    if builtin.is_builtin(name):
        return builtin.resolve_model(name, key=key)
    if looks_like_path(name):
        path = os.path.expanduser(name)
        if not os.path.exists(path):
            raise error(f"{key}: local folder '{name}' does not exist; {fix}")
        return path
    return name


def model_path(cfg: ModelConfig) -> str:
    """Where to load ``model.name_or_path`` from (``resolve_name``)."""
    return resolve_name(cfg.name_or_path, "model.name_or_path", "check the path, or use a Hub id like org/name", ModelError)


def load_config(cfg: ModelConfig):
    """The model's config (config.json alone: no weights)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path(cfg), **_load_kwargs(cfg))


def load_processor(cfg: ModelConfig, image_size: int | None):
    """The model's image processor, resized when the recipe asks for ``data.image_size``."""
    from transformers import AutoConfig, AutoImageProcessor

    path = model_path(cfg)
    try:
        processor = AutoImageProcessor.from_pretrained(path, **_load_kwargs(cfg))
        config = AutoConfig.from_pretrained(path, **_load_kwargs(cfg))
    except (OSError, ValueError) as err:
        from huggingface_hub import constants

        first = first_line(err)
        hint = (
            "the Hub is off (HF_HUB_OFFLINE=1) and it is not in the local cache: download it once online, "
            "or name a local folder"
            if constants.HF_HUB_OFFLINE and not builtin.is_builtin(cfg.name_or_path)
            else "check the id or path, or that the model ships an image processor"
        )
        raise ModelError(f"model.name_or_path: cannot load '{cfg.name_or_path}' ({first}); {hint}") from None
    if image_size is not None:
        processor = resize_processor(processor, config, image_size)
    return processor


def fixed_input_size(config) -> int | None:
    """Models with learned position embeddings for one size (ViT, DeiT, BEiT...)."""
    if getattr(config, "model_type", "") in ("vit", "deit", "beit", "data2vec-vision", "dinov2", "vit_msn", "vit_mae"):
        size = getattr(config, "image_size", None)
        return size if isinstance(size, int) else None
    return None


def resize_processor(processor, config, size: int):
    """A copy of ``processor`` whose output is ``size``×``size`` pixels.

    HF processors: every entry of ``size`` / ``crop_size`` is scaled by the same ratio, so
    the resize-then-crop proportions (``crop_pct``) are kept. timm: ``input_size`` in the
    pretrained config, which is also where the saved checkpoint keeps it.
    """
    fixed = fixed_input_size(config)
    if fixed is not None and fixed != size:
        raise ModelError(
            f"data.image_size: {size} differs from the {config.model_type} model's fixed input size {fixed} "
            "(its position embeddings are learned for that size); remove data.image_size or set it to "
            f"{fixed}"
        )
    if getattr(processor, "data_config", None) is not None:  # timm
        from transformers.models.timm_wrapper import TimmWrapperImageProcessor

        pretrained_cfg = dict(config.pretrained_cfg)
        pretrained_cfg["input_size"] = (3, size, size)
        pretrained_cfg.pop("test_input_size", None)
        return TimmWrapperImageProcessor(pretrained_cfg=pretrained_cfg, architecture=config.architecture)
    # Rebuild from the processor's plain-dict form so the class re-validates the sizes.
    settings = processor.to_dict()
    crop = settings.get("crop_size") if settings.get("do_center_crop") else None
    reference = crop or settings.get("size") or {}
    current = reference.get("height") or reference.get("shortest_edge")
    if not current:
        raise ModelError(f"data.image_size: cannot resize this model's image processor (size {reference})")
    ratio = size / current
    settings["size"] = {
        k: (int(round(v * ratio)) if isinstance(v, int) and k != "longest_edge" else v)
        for k, v in settings["size"].items()
    }
    if crop:
        settings["crop_size"] = {"height": size, "width": size}
    settings.pop("image_processor_type", None)
    return type(processor).from_dict(settings)


@dataclass
class LoadedModel:
    model: nn.Module
    reinitialised: list[str]
    head: list[str]
    trainable: int
    total: int
    #: With ``strategy: lora``: the adapters' settings and sizes, for the log and the card.
    lora: lora.Summary | None = None


def load_model(cfg: ModelConfig, class_names: list[str], processor) -> LoadedModel:
    """The pretrained model with a head for ``class_names``, frozen per ``cfg.strategy``."""
    from transformers import AutoConfig, AutoModelForImageClassification

    path = model_path(cfg)
    config = AutoConfig.from_pretrained(path, **_load_kwargs(cfg))
    # A TimmWrapper config whose model_args holds num_classes makes loading with a new
    # num_labels fail ("multiple values for keyword argument"); the head size comes from
    # num_labels alone.
    model_args = getattr(config, "model_args", None)
    if isinstance(model_args, dict) and "num_classes" in model_args:
        config.model_args = {k: v for k, v in model_args.items() if k != "num_classes"}
    config.num_labels = len(class_names)
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: i for i, name in enumerate(class_names)}
    if hasattr(config, "label_names"):
        # TimmWrapperConfig saves this attribute, not id2label: a stale copy would write
        # the base model's (or LABEL_n) names into the fine-tuned config.json.
        config.label_names = list(class_names)
    data_config = getattr(processor, "data_config", None)
    if data_config is not None and hasattr(config, "pretrained_cfg"):
        # timm keeps its preprocessing in config.json: keep it equal to what we train with.
        config.pretrained_cfg = {**config.pretrained_cfg, "input_size": tuple(data_config["input_size"])}
    if cfg.from_scratch:
        return _from_scratch(cfg, config, class_names)
    try:
        # safetensors only: a pickled checkpoint can run code when loaded.
        model, info = AutoModelForImageClassification.from_pretrained(
            path, config=config, ignore_mismatched_sizes=True, output_loading_info=True, use_safetensors=True,
            **_load_kwargs(cfg),
        )
    except OSError as err:
        first = first_line(err)
        raise ModelError(
            f"model.name_or_path: cannot load safetensors weights of '{cfg.name_or_path}' ({first}); "
            "finetune loads only safetensors checkpoints: convert it with save_pretrained()"
        ) from None
    reinit = sorted(set(info.get("missing_keys", ())) | {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())})
    head = head_parameter_names(model, reinit)
    stray = [k for k in reinit if k not in head]
    if stray:
        raise ModelError(
            f"model.name_or_path: '{cfg.name_or_path}' lacks pretrained weights outside the classification head "
            f"({', '.join(stray[:4])}{' …' if len(stray) > 4 else ''}); name an image-classification checkpoint"
        )
    if reinit:
        logger.info("re-initialised for %d classes: %s", len(class_names), ", ".join(reinit))
    if cfg.strategy == "lora":  # the model gets wrapped, so it is not frozen in place
        total = sum(p.numel() for p in model.parameters())
        model, adapters = lora.wrap(model, cfg, head)
        keep_frozen_in_eval(model)
        # What trains over the model as it is saved: the adapters and the head (peft's copy
        # of the head, and the merged weights, are not counted twice).
        trainable = adapters.adapter_parameters + adapters.head_parameters
        return LoadedModel(model, reinit, head, trainable, total + adapters.adapter_parameters, adapters)
    apply_strategy(model, cfg, head)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return LoadedModel(model, reinit, head, trainable, total)


def _from_scratch(cfg: ModelConfig, config, class_names: list[str]) -> LoadedModel:
    """``model.from_scratch``: the architecture of ``config`` with every weight drawn at random
    (the architecture's own initialisation, seeded by the caller), nothing loaded: the
    baseline that shows what pretraining is worth. Only strategy "full" is allowed (recipe_checks.py)."""
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_config(config, trust_remote_code=cfg.trust_remote_code)
    logger.info("model: %s's architecture from random initialisation (no pretrained weights)", cfg.name_or_path)
    total = sum(p.numel() for p in model.parameters())
    return LoadedModel(model, [], head_parameter_names(model, []), total, total)


def head_parameter_names(model: nn.Module, reinitialised: list[str]) -> list[str]:
    """The classification head: the last Linear layer(s), plus every re-initialised tensor
    that belongs to a module named like a head (DeiT-with-teacher has two heads)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = set()
    if linears:
        last = linears[-1]
        names |= {f"{last}.{p}" for p, _ in model.get_submodule(last).named_parameters()}
    for key in reinitialised:
        parts = key.split(".")[:-1]
        # Whole module names only: "fc" is a head in ResNets but "mlp.fc1" is not.
        if any(p in ("classifier", "head", "heads", "fc") or p.endswith(("_classifier", "_head")) for p in parts):
            names.add(key)
    params = dict(model.named_parameters())
    return sorted(n for n in names if n in params)


def find_blocks(model: nn.Module, head: list[str]) -> tuple[str, nn.ModuleList | nn.Sequential]:
    """The backbone's main stack of blocks: the ModuleList/Sequential holding the most
    parameters outside the head (ViT encoder.layer, ResNet stages, timm blocks, ...)."""
    head_set = set(head)
    best: tuple[int, str, nn.Module] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        count = sum(
            p.numel() for n, p in module.named_parameters(prefix=name) if n not in head_set
        )
        # Prefer the outermost container on ties: a stage list over a stage's own layers.
        if best is None or count > best[0]:
            best = (count, name, module)
    if best is None:
        raise ModelError("model.strategy 'partial': cannot find a stack of blocks in this model; use 'full' or 'linear_probe'")
    return best[1], best[2]  # type: ignore[return-value]


def apply_strategy(model: nn.Module, cfg: ModelConfig, head: list[str]) -> None:
    """Freeze per strategy; frozen parts stay in eval mode while the rest trains, so
    batch-norm statistics of a frozen backbone do not drift (and dropout is off there)."""
    if cfg.strategy in ("full", "lp_ft"):  # lp_ft: its fine-tune phase trains everything (lp_ft.py)
        return
    params = list(model.named_parameters())
    if cfg.strategy == "linear_probe":
        trainable = set(head)
    else:  # partial: the last n blocks, everything after them (final norm), and the head
        blocks_name, blocks = find_blocks(model, head)
        if cfg.unfreeze_last_n > len(blocks):
            raise ModelError(
                f"model.unfreeze_last_n: {cfg.unfreeze_last_n} but the model has {len(blocks)} blocks "
                f"({blocks_name}); use at most {len(blocks)}, or strategy 'full'"
            )
        first = f"{blocks_name}.{len(blocks) - cfg.unfreeze_last_n}."
        start = next(i for i, (n, _) in enumerate(params) if n.startswith(first))
        trainable = {n for n, _ in params[start:]} | set(head)
    for name, p in params:
        p.requires_grad_(name in trainable)
    keep_frozen_in_eval(model)


def keep_frozen_in_eval(model: nn.Module) -> None:
    """Put the frozen parts of ``model`` in eval mode at each forward pass, whatever mode
    the Trainer sets: their batch-norm statistics do not drift, and dropout is off there."""
    frozen = _frozen_modules(model)

    def hook(module: nn.Module, args):  # forward pre-hook
        if module.training:
            for m in frozen:
                m.eval()

    model.register_forward_pre_hook(hook)
    model.finetune_frozen_modules = frozen  # type: ignore[attr-defined] - for tests and logs


def unused_parameters(model: nn.Module, size: tuple[int, int]) -> list[str]:
    """Trainable parameters that get no gradient from a training step: DDP then has to search
    the autograd graph for them on every step (``find_unused_parameters``), else it stops.

    One forward and backward pass of two blank images in training mode, as the Trainer runs
    the model; the batch-norm statistics and the random state it touches are put back.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        return []
    device = params[0][1].device
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
            logits = model(pixel_values=torch.zeros(2, 3, *size, device=device)).logits
            grads = torch.autograd.grad(logits.float().sum(), [p for _, p in params], allow_unused=True)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
    return [n for (n, _), g in zip(params, grads) if g is None]


def _frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost modules whose parameters are all frozen (and that have some state)."""
    out: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        state = params or list(module.buffers())
        if state and all(not p.requires_grad for p in params):
            out.append(module)
            return
        for child in module.children():
            visit(child)

    for child in model.children():
        visit(child)
    return out


def is_convolutional(model: nn.Module) -> bool:
    """More than one Conv2d: a CNN, not a ViT-like model whose only conv is its patch embedding."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def use_channels_last(model: nn.Module, cfg: ModelConfig, args: Any = None) -> bool:
    """``model.channels_last``, or when null: a convolutional model on a CUDA GPU or on the
    CPU, unless FSDP or DeepSpeed shard the weights (their flattening is not tested with it).

    cuDNN's convolutions run faster on NHWC tensors, and so do oneDNN's on the CPU, the
    depthwise ones of EfficientNet most. ``bench/channels_last.py`` on 2 cores (torch 2.14):
    EfficientNet-Lite0 at 96 px 1.82× faster in inference and 1.40× in training, at 224 px
    2.53× and 1.59×; ResNet-18 1.22× and 1.01×; ConvNeXt-Atto and MobileNetV3-Small within
    4% either way. Other accelerators (MPS, XPU) keep the default layout: not measured."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    other = torch.backends.mps.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    device_ok = torch.cuda.is_available() or not other
    return device_ok and is_convolutional(model) and not sharded(args)


def sharded(args: Any = None) -> bool:
    """Whether FSDP or DeepSpeed shard the weights (the training arguments, or accelerate's
    launcher settings say so)."""
    shards = args is not None and (bool(getattr(args, "fsdp", None)) or bool(getattr(args, "deepspeed", None)))
    shards = shards or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    return shards or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def check_strategy_fits(cfg: ModelConfig, args: Any) -> None:
    """Stop before any data is read when the strategy cannot run under these arguments."""
    if cfg.strategy == "lora" and sharded(args):
        # The merge on save needs the whole of each adapted weight in one process, and
        # sharded peft models are not tested here.
        raise ModelError(
            "model.strategy 'lora' does not run under FSDP or DeepSpeed here; launch without them, "
            "or use strategy 'full'"
        )


def describe_strategy(loaded: LoadedModel, cfg: ModelConfig) -> str:
    share = 100.0 * loaded.trainable / max(loaded.total, 1)
    adapters = f"; {loaded.lora.describe()}" if loaded.lora is not None else ""
    return (
        f"strategy {cfg.strategy}: {loaded.trainable:,} of {loaded.total:,} parameters trainable ({share:.2f}%)"
        f"{adapters}"
    )
