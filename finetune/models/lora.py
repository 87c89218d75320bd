"""The ``lora`` strategy: low-rank adapters from ``peft`` on a classifier's layers, their checkpoints, and the merged model saved.

LoRA (Hu et al. 2021) freezes the pretrained weights and trains a low-rank update ``B·A``
(scaled by alpha / rank) next to each chosen layer; DoRA (Liu et al. 2024) also trains a
per-output magnitude. The new classification head trains fully (peft's
``modules_to_save``). Checkpoints written during training hold the adapters and the head
alone (what peft saves); the output folder gets the adapters merged into the weights
(``merge_and_unload``), a plain transformers model that loads without ``peft``.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from finetune.utils.errors import UserError

logger = logging.getLogger("finetune")

DEFAULT_RANK = 16
DEFAULT_DROPOUT = 0.1
#: The last name part of attention input projections: transformers' ViT, DeiT, BEiT and Swin
#: (``q_proj`` ...; ``query`` ... in older releases), timm's fused ``qkv`` (ViT, DeiT, Swin,
#: BEiT, EVA) and split ``q``/``kv`` (PVT, Twins). LoRA's paper adapts these (§7.1).
ATTENTION_INPUTS = frozenset({"q_proj", "k_proj", "v_proj", "query", "key", "value", "qkv", "q", "k", "v", "kv"})
#: The layer types peft's LoRA wraps that finetune adapts and merges.
_ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: The name peft gives the one adapter finetune trains.
ADAPTER = "default"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class LoraError(UserError, ValueError):
    """A ``model.lora_*`` setting that does not fit the model; one line, with the fix."""


@dataclass
class Summary:
    """What the log and the model card state about the adapters."""

    variant: str
    rank: int
    alpha: float
    dropout: float
    #: Full names of the adapted layers, and their distinct last name parts (for the log).
    targets: list[str] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)
    adapter_parameters: int = 0
    head_parameters: int = 0

    def describe(self) -> str:
        kind = "DoRA" if self.variant == "dora" else "LoRA"
        return (
            f"{kind} rank {self.rank}, alpha {self.alpha:g} (scale {self.alpha / self.rank:g}), dropout "
            f"{self.dropout:g}, on {len(self.targets)} layers ({', '.join(self.layer_names)}): "
            f"{self.adapter_parameters:,} adapter + {self.head_parameters:,} head parameters trained"
        )


def settings(cfg: Any) -> tuple[str, int, float, float]:
    """(variant, rank, alpha, dropout) of ``cfg`` with the defaults filled in: rank 16,
    alpha equal to the rank (scale 1) and dropout 0.1, the settings of peft's
    image-classification guide."""
    rank = cfg.lora_rank if cfg.lora_rank is not None else DEFAULT_RANK
    alpha = float(cfg.lora_alpha) if cfg.lora_alpha is not None else float(rank)
    dropout = cfg.lora_dropout if cfg.lora_dropout is not None else DEFAULT_DROPOUT
    return cfg.lora_variant or "lora", rank, alpha, dropout


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _short(name: str) -> str:
    """A layer's name for the log: its last part, with its parent's when that is an index
    (``downsampling_layer.1``)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def _adaptable(module: nn.Module) -> bool:
    """A layer whose adapter merges into its weight: grouped (depthwise) convolutions do
    not, in peft (``NotImplementedError`` when merging)."""
    return isinstance(module, _ADAPTABLE) and getattr(module, "groups", 1) == 1


def _outside(name: str, head_modules: set[str]) -> bool:
    return not any(name == h or name.startswith(h + ".") for h in head_modules)


def default_targets(model: nn.Module, head_modules: set[str]) -> list[str]:
    """The layers adapted when ``model.lora_target_modules`` is null: the attention input
    projections (query, key, value) where the model has attention (ViT, DeiT, BEiT, Swin,
    timm transformers); else every Linear and ungrouped convolution outside the head
    (ResNet, ConvNeXt, EfficientNet, timm CNNs), as depthwise convolutions cannot be merged."""
    layers = [(n, m) for n, m in model.named_modules() if n and _outside(n, head_modules) and _adaptable(m)]
    attention = [n for n, m in layers if _leaf(n) in ATTENTION_INPUTS and isinstance(m, nn.Linear)]
    return attention or [n for n, _ in layers]


def match_targets(model: nn.Module, wanted: list[str], head_modules: set[str]) -> list[str]:
    """The layers ``model.lora_target_modules`` names, each entry a full module name or its
    last part(s) (``q_proj`` matches every ``...attention.q_proj``), as peft matches them."""
    modules = dict(model.named_modules())
    found: list[str] = []
    for entry in wanted:
        hits = [n for n in modules if n and (n == entry or n.endswith("." + entry))]
        if not hits:
            examples = sorted({_short(n) for n, m in modules.items() if n and _adaptable(m)})[:8]
            raise LoraError(
                f"model.lora_target_modules: '{entry}' names no layer of this {type(model).__name__}; "
                f"use names of its Linear or Conv2d layers (e.g. {', '.join(examples)}), or null for the default"
            )
        for name in hits:
            module = modules[name]
            if not _outside(name, head_modules):
                raise LoraError(
                    f"model.lora_target_modules: '{entry}' names the classification head ({name}), which trains "
                    "fully anyway; leave it out"
                )
            if isinstance(module, _ADAPTABLE) and not _adaptable(module):
                raise LoraError(
                    f"model.lora_target_modules: '{entry}' names a grouped (depthwise) convolution ({name}), whose "
                    "adapter peft cannot merge into the weights; leave it out"
                )
            if not isinstance(module, _ADAPTABLE):
                raise LoraError(
                    f"model.lora_target_modules: '{entry}' names {name}, a {type(module).__name__}; LoRA adapts "
                    "Linear and Conv layers only: name those (e.g. q_proj, not attention)"
                )
            if name not in found:
                found.append(name)
    return found


def wrap(model: nn.Module, cfg: Any, head: list[str]) -> tuple[nn.Module, Summary]:
    """``model`` wrapped by peft with adapters on the chosen layers and the head (the
    modules holding the ``head`` parameters) trained fully; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    variant, rank, alpha, dropout = settings(cfg)
    head_modules = {p.rsplit(".", 1)[0] for p in head}
    if cfg.lora_target_modules is None:
        targets = default_targets(model, head_modules)
        if not targets:
            raise LoraError(
                f"model.strategy 'lora': this {type(model).__name__} has no Linear or ungrouped Conv layer outside "
                "the head to adapt; use strategy 'full' or 'partial'"
            )
    else:
        targets = match_targets(model, cfg.lora_target_modules, head_modules)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        use_dora=variant == "dora",
        # Full names, so that peft adapts exactly the layers checked above (it would match a
        # short name such as "fc1" against the last parts of every layer's name).
        target_modules=targets,
        modules_to_save=sorted(head_modules),
        bias="none",
    )
    wrapped = get_peft_model(model, config, adapter_name=ADAPTER)
    trainable = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if ".lora_" in n}
    # peft trains a copy of each head module, under its own name.
    head_copies = {f"base_model.model.{h.rsplit('.', 1)[0]}.modules_to_save.{ADAPTER}.{_leaf(h)}" for h in head}
    wrong = sorted(set(trainable) ^ (adapters | head_copies))
    if wrong or not adapters:  # peft matched other modules than the ones checked above
        raise LoraError(
            f"model.strategy 'lora': peft set up other trainable tensors than the adapters and the head "
            f"({', '.join(wrong[:3]) or 'no adapter'}); name the layers in model.lora_target_modules"
        )
    summary = Summary(
        variant=variant,
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        targets=targets,
        layer_names=sorted({_short(t) for t in targets}),
        adapter_parameters=sum(trainable[n].numel() for n in adapters),
        head_parameters=sum(trainable[n].numel() for n in head_copies),
    )
    return wrapped, summary


def is_adapted(model: nn.Module) -> bool:
    """Whether ``model`` is a peft-wrapped model (``strategy: lora``)."""
    try:
        from peft import PeftModel
    except ImportError:  # no peft: nothing can be wrapped by it
        return False
    return isinstance(model, PeftModel)


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load the adapters and the head saved in a Trainer checkpoint into ``model``, strictly:
    every trained tensor must be in the file and nothing else may be."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(checkpoint) / ADAPTER_WEIGHTS
    state = load_file(path, device=str(next(model.parameters()).device))
    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    unloaded = sorted(trained & set(result.missing_keys))
    if result.unexpected_keys or unloaded:
        raise LoraError(
            f"{path}: the checkpoint does not fit this model's adapters "
            f"({', '.join((list(result.unexpected_keys) or unloaded)[:3])}); it was written with other lora settings: "
            "remove the checkpoint folders, or train into a new output_dir"
        )
    logger.info("loaded adapters and head from %s", checkpoint)


def load_if_adapted(model, checkpoint: str) -> bool:
    """For the Trainer's reloads (:mod:`finetune.utils.compat`): a peft-wrapped model's
    adapters and head loaded from ``checkpoint`` (True), or nothing done for any other model
    (False)."""
    if not is_adapted(model):
        return False
    load_checkpoint(model, checkpoint)
    return True


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of the peft-wrapped ``model`` with the adapters merged into the weights and
    the trained head in place: the plain transformers model, as ``from_pretrained`` gives it."""
    return copy.deepcopy(model).merge_and_unload()


def save_merged(trainer: Any, output_dir: str | os.PathLike | None = None, prepare: Any = None) -> None:
    """The merged model, the image processor and the training arguments, as ``save_model``
    writes them for any other run, so the folder loads without ``peft``. ``prepare``, when
    given, is called with the merged copy before it is saved (a temperature folded into its
    head acts on the merged weights, the live adapters untouched)."""
    import torch
    from transformers.trainer import TRAINING_ARGS_NAME

    output_dir = str(output_dir if output_dir is not None else trainer.args.output_dir)
    if not trainer.args.should_save:
        return
    os.makedirs(output_dir, exist_ok=True)
    logger.info("saving the model with the adapters merged into its weights to %s", output_dir)
    merged = merged_copy(trainer.accelerator.unwrap_model(trainer.model))
    if prepare is not None:
        prepare(merged)
    merged.save_pretrained(output_dir, is_main_process=True)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    torch.save(trainer.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
