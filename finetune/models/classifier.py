"""A pretrained classifier loaded with a new head for the user's classes, prepared for its strategy.

``AutoModelForImageClassification`` loads HF-native models (ViT, DeiT, ResNet, ConvNeXt,
Swin, BEiT, ...) and timm models through TimmWrapper; ``builtin:`` names resolve to local
checkpoints (:mod:`finetune.models.builtin`). Only head parameters may be re-initialised:
anything else missing from the checkpoint means the wrong model was named, and is an error.
With ``model.from_scratch`` only the configuration is loaded, and every weight is drawn at
random (the no-pretraining baseline of a study).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from finetune.data import multi_label as ml
from finetune.models import builtin, drop_path, lora, strategies
from finetune.recipe import ModelConfig
from finetune.utils.devices import sharded
from finetune.utils.errors import ModelError, first_line
from finetune.utils.locations import looks_like_path

logger = logging.getLogger(__name__)


def _load_kwargs(cfg: ModelConfig) -> dict:
    """What every config, processor and model load of ``cfg`` passes to transformers."""
    if not cfg.trust_remote_code:
        return {"revision": cfg.revision, "trust_remote_code": False}
    check_remote_code(cfg)
    # transformers takes a repository's code from its moving main branch unless told
    # otherwise: the pinned commit for the code too, not only for the weights.
    return {"revision": cfg.revision, "trust_remote_code": True, "code_revision": cfg.revision}


#: The files whose ``auto_map`` names the code a remote-code model runs.
_CODE_MAPS = ("config.json", "preprocessor_config.json")


def check_remote_code(cfg: ModelConfig) -> None:
    """Refuse a model whose ``auto_map`` takes code from another repository
    (``"other/repo--module.Class"``): its pinned ``model.revision`` would not cover that code,
    which transformers loads from the other repository's moving main branch. Read as plain
    JSON, before transformers sees the files (it would import the code while reading them)."""
    path = model_path(cfg)
    for name in _CODE_MAPS:
        raw = _read_json(path, name, cfg.revision)
        auto_map = raw.get("auto_map") if isinstance(raw, dict) else None
        if not isinstance(auto_map, dict):
            continue
        for value in auto_map.values():
            for ref in value if isinstance(value, list) else [value]:
                if not isinstance(ref, str) or "--" not in ref:
                    continue
                repo = ref.split("--", 1)[0]
                if os.path.isdir(path) or repo != cfg.name_or_path:
                    raise ModelError(
                        f"model.name_or_path: {name} of '{cfg.name_or_path}' takes its code from another repository "
                        f"(auto_map '{ref}'), which the pinned model.revision does not cover; finetune does not run "
                        "it: use a model whose code is in its own repository, pinned by model.revision"
                    )


def _read_json(path: str, name: str, revision: str | None) -> Any:
    """``name`` of a local folder or a Hub repo at ``revision`` (from the cache when offline),
    parsed; None when there is none or it does not parse (the loader then says why)."""
    try:
        if os.path.isdir(path):
            file = os.path.join(path, name)
        else:
            from huggingface_hub import hf_hub_download

            file = hf_hub_download(path, name, revision=revision)
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except Exception:  # noqa: BLE001 - missing, offline and not cached, unreadable: the loader reports it
        return None


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
    """A classifier with its new head, prepared for its strategy
    (:mod:`finetune.models.strategies`)."""

    model: nn.Module
    #: The tensors drawn anew for the user's classes (the head's).
    reinitialised: list[str]
    head: list[str]
    trainable: int
    total: int
    #: With ``strategy: lora``: the adapters' settings and sizes, for the log and the card.
    lora: lora.Summary | None = None

    def describe(self, cfg: ModelConfig) -> str:
        """The strategy's log line: what trains, and how much of the model that is."""
        return strategies.of(cfg).describe(strategies.Prepared(self.model, self.trainable, self.total, self.lora))


def set_problem_type(config, multi_label: bool) -> None:
    """Say in ``config`` whether the classes are exclusive (one per image, softmax) or not
    (any number per image, one sigmoid each): ``problem_type`` is what
    ``pipeline("image-classification")`` and every later stage of finetune read
    (:func:`finetune.data.multi_label.is_multi_label`). The head keeps its shape either way
    (one logit per class).

    A base checkpoint that was itself fine-tuned for multi-label classification (or for
    another task) must not pass its ``problem_type`` or its decision thresholds on to a run on
    other data: the thresholds are tuned anew for the new classes after training, and until
    then each class has the default one."""
    if multi_label:
        config.problem_type = ml.PROBLEM_TYPE
    elif getattr(config, "problem_type", None) not in (None, "single_label_classification"):
        logger.info("model: the base model's problem_type '%s' is dropped (the data has one class per image)",
                    config.problem_type)
        config.problem_type = None
    if hasattr(config, ml.THRESHOLDS_KEY):
        delattr(config, ml.THRESHOLDS_KEY)


def load_model(cfg: ModelConfig, class_names: list[str], processor, multi_label: bool = False) -> LoadedModel:
    """The pretrained model with a head for ``class_names``, frozen per ``cfg.strategy``;
    ``multi_label``: the data gives each image any number of the classes
    (:func:`set_problem_type`)."""
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
    set_problem_type(config, multi_label)
    data_config = getattr(processor, "data_config", None)
    if data_config is not None and hasattr(config, "pretrained_cfg"):
        # timm keeps its preprocessing in config.json: keep it equal to what we train with.
        config.pretrained_cfg = {**config.pretrained_cfg, "input_size": tuple(data_config["input_size"])}
    if cfg.drop_path_rate is not None:
        drop_path.apply(config, cfg.drop_path_rate)
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
    prepared = strategies.of(cfg).prepare(model, cfg, head)
    return LoadedModel(prepared.model, reinit, head, prepared.trainable, prepared.total, prepared.adapters)


def _from_scratch(cfg: ModelConfig, config, class_names: list[str]) -> LoadedModel:
    """``model.from_scratch``: the architecture of ``config`` with every weight drawn at
    random (the architecture's own initialisation, seeded by the caller), nothing loaded:
    the baseline that shows what pretraining is worth. Only strategy "full" is allowed (the
    recipe checks say so)."""
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


def is_convolutional(model: nn.Module) -> bool:
    """More than one Conv2d: a CNN, not a ViT-like model whose only conv is its patch embedding."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def use_channels_last(model: nn.Module, cfg: ModelConfig, args: Any = None) -> bool:
    """``model.channels_last``, or when null: a convolutional model on a CUDA GPU or on the
    CPU, unless FSDP or DeepSpeed shard the weights (their flattening is not tested with it).

    cuDNN's convolutions run faster on NHWC tensors, and so do oneDNN's on the CPU, the
    depthwise ones of EfficientNet most; in no convolutional model timed on the CPU was it
    clearly slower (bench/README.md, the channels-last table). Other accelerators (MPS, XPU)
    keep the default layout: it has not been timed there."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    other = torch.backends.mps.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    device_ok = torch.cuda.is_available() or not other
    return device_ok and is_convolutional(model) and not sharded(args)


