"""Layer-wise learning-rate decay: each parameter's depth in the network, and the optimizer parameter groups that scale its learning rate by it.

With ``model.layer_decay: d`` the head (and what follows the last block: final norm,
pooler) trains at the recipe's learning rate, the last block at ``d`` times it, the one
before at ``d²`` and so on down to the embeddings (BEiT, Bao et al. 2022; the ELECTRA and
MAE fine-tuning recipes): the early layers, which hold the most general features, move
least.

Depths come from timm's own grouping: a timm model (TimmWrapper) uses its
``group_matcher(coarse=False)`` through ``timm.models.group_parameters``, as
``timm.optim.param_groups_layer_decay`` does (``timm.optim.auto_group_layers`` for a model
without one). The transformers families get matchers in the same format, written below
(stem, then one depth per block in forward order; anything unmatched is the head). The
weight-decay split is the Trainer's own (``Trainer.get_decay_parameter_names``: no decay for
biases and norms), so ``layer_decay: 1`` gives exactly the Trainer's optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from finetune.utils.errors import UserError

#: Matchers in timm's ``group_matcher`` format, ``{p}`` being the model's
#: ``base_model_prefix``. Stem first, then blocks; unmatched parameters (final norm, pooler,
#: head) come last. Names of transformers 4.x and 5.x alike (``encoder.layer.N`` / ``layers.N``).
_TRANSFORMER = {"stem": r"^{p}\.embeddings\.", "blocks": r"^{p}\.(?:encoder\.)?layers?\.(\d+)\."}
_SWIN = {
    "stem": r"^{p}\.embeddings\.",
    "blocks": [
        (r"^{p}\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.", None),
        # Patch merging ends its stage: it joins the stage's last block (99999 is timm's
        # MATCH_PREV_GROUP, as its Swin matcher uses it).
        (r"^{p}\.encoder\.layers\.(\d+)\.downsample\.", (99999,)),
    ],
}
_CONVNEXT = {
    "stem": r"^{p}\.embeddings\.",
    "blocks": [
        # A stage's downsampling goes with its first block, as in timm's ConvNeXt matcher.
        (r"^{p}\.encoder\.stages\.(\d+)\.downsampling_layer\.", (0,)),
        (r"^{p}\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", None),
    ],
}
_RESNET = {"stem": r"^{p}\.embedder\.", "blocks": r"^{p}\.encoder\.stages\.(\d+)\.layers\.(\d+)\."}
MATCHERS: dict[str, dict[str, Any]] = {
    **dict.fromkeys(("vit", "deit", "beit", "data2vec-vision", "dinov2", "vit_msn"), _TRANSFORMER),
    **dict.fromkeys(("swin", "swinv2"), _SWIN),
    **dict.fromkeys(("convnext", "convnextv2"), _CONVNEXT),
    "resnet": _RESNET,
}
TIMM = "timm_wrapper"


class LayerDecayError(UserError, ValueError):
    """``model.layer_decay`` cannot apply to this model or optimizer; one line, with the fix."""


def check_supported(config: Any) -> None:
    """Raise (one line, with the fix) when no depth map exists for a model of this config;
    cheap, so the training run calls it before the data is prepared."""
    kind = getattr(config, "model_type", None)
    if kind != TIMM and kind not in MATCHERS:
        supported = ", ".join(sorted({*MATCHERS, "timm models"}))
        raise LayerDecayError(
            f"model.layer_decay: no layer map for model type '{kind}' (supported: {supported}); "
            "remove model.layer_decay"
        )


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Every parameter's depth: 0 for the stem (embeddings), one more per block in forward
    order, the largest for the head and what follows the last block."""
    from timm.models import group_parameters

    check_supported(getattr(model, "config", None))
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None:
        from timm.optim import auto_group_layers

        if hasattr(timm_model, "group_matcher"):
            ids = group_parameters(timm_model, timm_model.group_matcher(coarse=False), reverse=True)
        else:
            ids = auto_group_layers(timm_model)
        return {f"timm_model.{name}": i for name, i in ids.items()}
    prefix = model.base_model_prefix
    matcher = {
        group: spec.format(p=prefix) if isinstance(spec, str) else [(r.format(p=prefix), s) for r, s in spec]
        for group, spec in MATCHERS[model.config.model_type].items()
    }
    ids = group_parameters(model, matcher, reverse=True)
    top = max(ids.values())
    if top < 2:  # no stem or no block matched: the names are not the ones above
        raise LayerDecayError(
            f"model.layer_decay: cannot find the embeddings and blocks of this {model.config.model_type} model "
            f"(parameter names such as {next(iter(ids))}); remove model.layer_decay"
        )
    return ids


@dataclass
class Group:
    """One optimizer parameter group: a depth, with or without weight decay."""

    depth: int  # 0: the stem
    decay: bool
    names: list[str]
    params: list[nn.Parameter]
    lr: float
    weight_decay: float

    def as_dict(self) -> dict[str, Any]:
        return {"params": self.params, "lr": self.lr, "weight_decay": self.weight_decay}


def param_groups(
    model: nn.Module, layer_decay: float, learning_rate: float, weight_decay: float, decay_names: set[str]
) -> list[Group]:
    """The trainable parameters in one group per (depth, weight decay or not), each at
    ``learning_rate · layer_decay^(top − depth)``, the head's group first.

    The head first: the Trainer logs the first group's learning rate as ``learning_rate``,
    which then stays the recipe's. Frozen parameters (``strategy: partial``) are left out,
    but keep their depth: the trained blocks decay as they would in a full fine-tune.
    """
    ids = layer_ids(model)
    top = max(ids.values())
    groups: dict[tuple[int, bool], Group] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = ids.get(name, top)
        decay = name in decay_names
        key = (depth, decay)
        if key not in groups:
            lr = learning_rate * layer_decay ** (top - depth)
            groups[key] = Group(depth, decay, [], [], lr, weight_decay if decay else 0.0)
        groups[key].names.append(name)
        groups[key].params.append(param)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]


def describe(groups: list[Group], layer_decay: float) -> str:
    """One log line: how many groups, and the learning rate of the first, middle and last."""
    depths = len({g.depth for g in groups})
    picks = [("first", groups[0]), ("middle", groups[len(groups) // 2]), ("last", groups[-1])]
    shown = "; ".join(f"{which} {g.lr:.3g} (depth {g.depth}: {g.names[0]}, …)" for which, g in picks)
    return (
        f"model.layer_decay {layer_decay:g}: {len(groups)} parameter groups over {depths} depths, "
        f"learning rates {shown}"
    )

