"""An exponential moving average (EMA) of the weights during training: updated after each optimizer step, evaluated in place of the training weights, kept in every checkpoint, and the final model."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import TrainerCallback

logger = logging.getLogger("finetune")

#: The EMA's tensors in a checkpoint folder, beside the training weights.
EMA_NAME = "ema.safetensors"


class WeightEma:
    """The EMA of a model's weights and buffers, through timm's ``ModelEmaV3``.

    After optimizer step ``s`` the average moves towards the weights by ``1 − decay(s)``:
    ``decay(1)`` is 0 (the average starts at the weights after the first step), then
    ``decay``; with ``warmup``, ``min(decay, 1 − s^(−2/3))`` (timm's warmup, γ = 1, power
    2/3: about 0.95 at step 100 and 0.99 at step 1,000), which a short run on little data
    needs: 300 steps at a plain 0.999 would still give the first step's weights 74% of the
    average.

    The update is a pure function of the average and the weights (``torch._foreach_lerp_``
    through timm), and the average is saved and loaded bit for bit, so a resumed run ends
    with the same average as one that never stopped. Float tensors are averaged, integer
    buffers (batch-norm counters) copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True) -> None:
        from timm.utils import ModelEmaV3

        self.decay, self.warmup = decay, warmup
        # A full copy of the model on its device; fp32 like the weights the optimizer holds.
        self.average = ModelEmaV3(model, decay=decay, use_warmup=warmup)
        #: True once the average has replaced the training weights (the end of training).
        self.applied = False

    def update(self, model: torch.nn.Module, step: int) -> None:
        self.average.update(model, step=step)

    def decay_at(self, step: int) -> float:
        return self.average.get_decay(step)

    def _tensors(self) -> list[torch.Tensor]:
        return list(self.average.module.state_dict().values())

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the block with the average in ``model``'s tensors; the training weights come
        back, bit for bit, afterwards."""
        live = list(model.state_dict().values())
        with torch.no_grad():
            backup = [t.clone() for t in live]
            _copy(live, self._tensors())
        try:
            yield
        finally:
            with torch.no_grad():
                _copy(live, backup)

    def apply(self, model: torch.nn.Module) -> None:
        """Put the average into ``model`` for good: the model saved and reported."""
        with torch.no_grad():
            _copy(list(model.state_dict().values()), self._tensors())
        self.applied = True

    def save(self, folder: str | Path, step: int) -> None:
        from safetensors.torch import save_file

        # Copies: tied weights share storage, and channels-last ones are not contiguous,
        # both of which save_file refuses.
        state = {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in self.average.module.state_dict().items()}
        save_file(state, str(Path(folder) / EMA_NAME), metadata={"step": str(step), "decay": repr(self.decay)})

    def load(self, folder: str | Path) -> bool:
        """Load the average saved in checkpoint ``folder``; False (and a warning) when it has none."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(folder) / EMA_NAME
        if not path.is_file():
            logger.warning("%s has no %s: the EMA of the weights restarts from the checkpoint's weights", folder, EMA_NAME)
            return False
        with safe_open(str(path), framework="pt") as f:
            step = (f.metadata() or {}).get("step")
        saved = load_file(str(path), device=str(self._tensors()[0].device))
        target = self.average.module.state_dict()
        if saved.keys() != target.keys():
            missing, extra = sorted(target.keys() - saved.keys()), sorted(saved.keys() - target.keys())
            raise RuntimeError(f"{path} does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            _copy(list(target.values()), [saved[k] for k in target])
        logger.info("loaded the EMA of the weights from %s (step %s)", path, step)
        return True

    def describe(self) -> str:
        ramp = ", ramped up as 1 − step^(−2/3)" if self.warmup else ""
        return f"EMA of the weights (decay {self.decay:g}{ramp}) evaluated, selected and saved"


def _copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """Copy each source into its target in place (keeping the target's memory format)."""
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)


class EmaCallback(TrainerCallback):
    """Drives a :class:`WeightEma` from the Trainer's events: an update after each optimizer
    step (before that step's evaluation and checkpoint), and the average into the model when
    training ends (after ``load_best_model_at_end``, so the best checkpoint's average)."""

    def __init__(self, ema: WeightEma) -> None:
        self.ema = ema

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.ema.apply(model)
