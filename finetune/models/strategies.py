"""The training strategies as objects in one registry: what each trains, how it freezes or wraps the model, and what its checkpoints hold.

The recipe names a strategy (``model.strategy``); the run asks the strategy object, never
the name: ``of(cfg)`` gives it. A new strategy is one class here and its recipe keys in
finetune/recipe/ (schema and checks); the run needs no new branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from finetune.models import lora
from finetune.recipe import ModelConfig
from finetune.utils.devices import sharded
from finetune.utils.errors import ModelError


@dataclass(frozen=True)
class Prepared:
    """A model made ready for its strategy: possibly wrapped (LoRA), and what trains in it."""

    model: nn.Module
    #: Trained parameters, counted on the model as it is saved (LoRA: adapters and head).
    trainable: int
    #: All parameters of the model being trained (LoRA: the base model plus its adapters).
    total: int
    #: LoRA's adapters: their settings and sizes, for the log and the card.
    adapters: lora.Summary | None = None


class Strategy:
    """One way to fine-tune: the base class trains every weight (``full``)."""

    name: ClassVar[str] = "full"
    #: What trains, for the log, the card and the docs.
    trains: ClassVar[str] = "every weight"
    #: A first phase fits a linear probe on cached features before every weight trains (LP-FT).
    probe_first: ClassVar[bool] = False

    def caches_features(self, cfg: ModelConfig) -> bool:
        """Whether the frozen backbone runs once and the head trains on its cached features."""
        return False

    def checkpoint_holds(self, cfg: ModelConfig) -> str:
        """What a checkpoint holds besides the optimizer: "model" (every weight), "head", or
        "adapters" (LoRA's adapters and the head). Sizes the disk check before a save."""
        return "model"

    def prepare(self, model: nn.Module, cfg: ModelConfig, head: list[str]) -> Prepared:
        """Freeze (or wrap) ``model`` for this strategy; ``head``: its head's parameter names."""
        total = sum(p.numel() for p in model.parameters())
        return Prepared(model, total, total)

    def check_fits(self, args: Any) -> None:
        """Stop before any data is read when the strategy cannot run under these training arguments."""

    def describe(self, prepared: Prepared) -> str:
        share = 100.0 * prepared.trainable / max(prepared.total, 1)
        adapters = f"; {prepared.adapters.describe()}" if prepared.adapters is not None else ""
        return (
            f"strategy {self.name}: {prepared.trainable:,} of {prepared.total:,} parameters trainable "
            f"({share:.2f}%){adapters}"
        )


class _Frozen(Strategy):
    """Strategies that freeze part of the model in place."""

    def trainable_names(self, model: nn.Module, cfg: ModelConfig, head: list[str]) -> set[str]:
        raise NotImplementedError

    def prepare(self, model: nn.Module, cfg: ModelConfig, head: list[str]) -> Prepared:
        trainable = self.trainable_names(model, cfg, head)
        for name, p in model.named_parameters():
            p.requires_grad_(name in trainable)
        keep_frozen_in_eval(model)
        return Prepared(
            model,
            sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()),
        )


class LinearProbe(_Frozen):
    name = "linear_probe"
    trains = "the classification head, on a frozen backbone"

    def caches_features(self, cfg: ModelConfig) -> bool:
        return cfg.feature_cache

    def checkpoint_holds(self, cfg: ModelConfig) -> str:
        # On cached features the Trainer trains the head alone
        # (``finetune.probe.features.HeadModel``).
        return "head" if cfg.feature_cache else "model"

    def trainable_names(self, model: nn.Module, cfg: ModelConfig, head: list[str]) -> set[str]:
        return set(head)


class Partial(_Frozen):
    name = "partial"
    trains = "the last model.unfreeze_last_n blocks of the backbone, what follows them, and the head"

    def trainable_names(self, model: nn.Module, cfg: ModelConfig, head: list[str]) -> set[str]:
        params = list(model.named_parameters())
        blocks_name, blocks = find_blocks(model, head)
        if cfg.unfreeze_last_n > len(blocks):
            raise ModelError(
                f"model.unfreeze_last_n: {cfg.unfreeze_last_n} but the model has {len(blocks)} blocks "
                f"({blocks_name}); use at most {len(blocks)}, or strategy 'full'"
            )
        first = f"{blocks_name}.{len(blocks) - cfg.unfreeze_last_n}."
        start = next(i for i, (n, _) in enumerate(params) if n.startswith(first))
        return {n for n, _ in params[start:]} | set(head)


class Lora(Strategy):
    name = "lora"
    trains = "low-rank adapters on the backbone's layers, and the head"

    def checkpoint_holds(self, cfg: ModelConfig) -> str:
        return "adapters"

    def prepare(self, model: nn.Module, cfg: ModelConfig, head: list[str]) -> Prepared:
        total = sum(p.numel() for p in model.parameters())
        wrapped, adapters = lora.wrap(model, cfg, head)
        keep_frozen_in_eval(wrapped)
        # What trains over the model as it is saved: the adapters and the head (peft's copy
        # of the head, and the merged weights, are not counted twice).
        trainable = adapters.adapter_parameters + adapters.head_parameters
        return Prepared(wrapped, trainable, total + adapters.adapter_parameters, adapters)

    def check_fits(self, args: Any) -> None:
        if sharded(args):
            # The merge on save needs the whole of each adapted weight in one process, and
            # sharded peft models are not tested here.
            raise ModelError(
                "model.strategy 'lora' does not run under FSDP or DeepSpeed here; launch without them, "
                "or use strategy 'full'"
            )


class LpFt(Strategy):
    name = "lp_ft"
    trains = "the head on cached features first (a linear probe), then every weight from that head"
    probe_first = True


#: Every strategy, by the name a recipe gives (``finetune.recipe.schema.Strategy`` lists the
#: same names).
REGISTRY: dict[str, Strategy] = {s.name: s for s in (Strategy(), LinearProbe(), Partial(), Lora(), LpFt())}


def of(cfg: ModelConfig) -> Strategy:
    """The strategy object the recipe names."""
    return REGISTRY[cfg.strategy]


# ------------------------------------------------------------------------- freezing


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
        raise ModelError(
            "model.strategy 'partial': cannot find a stack of blocks in this model; use 'full' or 'linear_probe'"
        )
    return best[1], best[2]  # type: ignore[return-value]


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
