"""Stochastic depth: ``model.drop_path_rate`` handed to the library that builds the model, and refused for a model without it before any data is loaded.

Stochastic depth (Huang et al. 2016) drops each residual branch of a training image with
some probability, rising linearly over the blocks up to the rate given; the libraries
build it themselves, so nothing here drops anything. A timm model (TimmWrapper) gets the rate
in its config's ``model_args``, which TimmWrapper passes to ``timm.create_model`` as
``drop_path_rate`` (and which ``config.json`` keeps, so the saved model rebuilds the same
way; in eval mode the layers pass everything through). A transformers model gets it as
its config's ``drop_path_rate`` (ConvNeXt, Swin, BEiT, Data2Vec-vision, DINOv2, ...);
ViT, DeiT, ResNet and the other configs without that attribute have no stochastic depth.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from finetune.utils.errors import UserError

#: The model type of a timm model loaded through transformers.
TIMM = "timm_wrapper"


class DropPathError(UserError, ValueError):
    """``model.drop_path_rate`` cannot apply to this model; one line, with the fix."""


def _refuse(kind: str, why: str) -> DropPathError:
    return DropPathError(
        f"model.drop_path_rate: the {kind} model has no stochastic depth ({why}); remove model.drop_path_rate, "
        "or use a model that has it: timm models (most: EfficientNet, ResNet, ViT, ConvNeXt, ...) or "
        "transformers' ConvNeXt, Swin, BEiT, Data2Vec-vision, DINOv2"
    )


def _timm_kwargs(config: Any, rate: float) -> dict[str, Any]:
    """What TimmWrapper passes to ``timm.create_model`` besides the architecture, with the rate."""
    args = {k: v for k, v in (getattr(config, "model_args", None) or {}).items() if k != "num_classes"}
    return {**args, "drop_path_rate": rate}


def _check_config(config: Any) -> None:
    """A transformers config: it must hold one number as ``drop_path_rate`` (CvT keeps one per
    stage, which one rate cannot replace)."""
    kind = getattr(config, "model_type", None)
    current = getattr(config, "drop_path_rate", None)
    if current is None:
        raise _refuse(str(kind), "its config has no drop_path_rate")
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise _refuse(str(kind), f"its config's drop_path_rate is {current!r}, one value per stage, not one rate")


def check_supported(config: Any, rate: float) -> None:
    """Raise (one line, naming the model type, with the fix) when the model of ``config``
    has no stochastic depth. Cheap enough to run before the data pass: a transformers config
    is read; a timm architecture is built on the meta device (no memory, no weights), which
    tells both whether it takes ``drop_path_rate`` and whether any DropPath layer gets it."""
    kind = getattr(config, "model_type", None)
    if kind != TIMM:
        _check_config(config)
        return
    import timm
    import torch

    arch = getattr(config, "architecture", kind)
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=0, **_timm_kwargs(config, rate))
    except TypeError as err:
        if "drop_path_rate" not in str(err):
            raise
        raise _refuse(f"timm {arch}", "timm's builder takes no drop_path_rate for it") from None
    if rate > 0 and not any(p > 0 for p in drop_rates(model)):
        raise _refuse(f"timm {arch}", "it takes drop_path_rate but builds no DropPath layer with it")


def apply(config: Any, rate: float) -> None:
    """Set the rate where the model's builder reads it, in ``config`` (before the model is made)."""
    if getattr(config, "model_type", None) == TIMM:
        config.model_args = _timm_kwargs(config, rate)
        return
    _check_config(config)
    config.drop_path_rate = rate


def drop_rates(model: nn.Module) -> list[float]:
    """The drop probability of every DropPath layer of ``model`` (timm's and transformers' both
    keep it as ``drop_prob``), in module order."""
    return [float(m.drop_prob) for m in model.modules() if isinstance(getattr(m, "drop_prob", None), (int, float))]


def describe(model: nn.Module, rate: float) -> str:
    """One log line: how many layers drop, and up to what rate."""
    rates = [p for p in drop_rates(model) if p > 0]
    if not rates:
        return f"model.drop_path_rate {rate:g}: no DropPath layer drops anything (rate 0: stochastic depth off)"
    return (
        f"model.drop_path_rate {rate:g}: stochastic depth in {len(rates)} DropPath layer(s), "
        f"drop rates {min(rates):.3g} to {max(rates):.3g} (rising with depth; in training mode only)"
    )
