"""Every use of a dependency's private API, each with the upstream behaviour it works around and the versions checked."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("finetune")

# --- transformers Trainer
#
# Checked with transformers 5.24.0; pyproject.toml bounds transformers below the next
# minor release, which tests/test_compat.py must pass before the bound moves.


def loss_is_a_batch_mean(trainer: Any) -> None:
    """Tell ``trainer`` that the model's loss is a plain mean over its batch.

    Upstream behaviour: the Trainer sets ``model_accepts_loss_kwargs`` from the model's
    forward signature; image classifiers take ``**kwargs``, so it concludes that they divide
    their loss by ``num_items_in_batch``, passes them that count, multiplies the loss by the
    number of processes (``average_tokens_across_devices``) and skips the division by the
    gradient-accumulation steps. Their loss is a batch mean, so N processes would train with
    N× the gradient. The attribute is the only switch for all three: the public
    ``loss_is_scaled_for_ga`` covers the accumulation alone, and the model attribute
    ``accepts_loss_kwargs`` that the Trainer reads first is not documented either.
    Checked with transformers 5.24.0 (set in ``Trainer.__init__``, read in
    ``compute_loss`` and ``training_step``).
    """
    trainer.model_accepts_loss_kwargs = False


def reload_weights(trainer: Any, checkpoint: str) -> None:
    """Load a checkpoint's weights into ``trainer.model`` with every key converted and checked.

    Upstream behaviour: transformers 5 writes checkpoints with a model's legacy key names
    (ViT's ``attention.attention.key`` for the ``k_proj`` it holds in memory) but reads them
    back, for resuming and for ``load_best_model_at_end``, with a plain
    ``load_state_dict(strict=False)``, which silently skips every renamed tensor: training
    would go on from the base model's weights, and the "best" model would be the last one.
    ``from_pretrained`` applies the key conversion; copying its tensors with ``strict=True``
    makes any mismatch an error instead. Checked with transformers 5.24.0.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    fresh = type(model).from_pretrained(checkpoint, config=model.config)
    model.load_state_dict(fresh.state_dict(), strict=True)
    logger.info("loaded weights from %s", checkpoint)


def load_from_checkpoint(trainer: Any, checkpoint: str, model: Any, upstream: Callable[..., None]) -> None:
    """``Trainer._load_from_checkpoint(resume_from_checkpoint, model=None)``, through :func:`reload_weights`.

    No public API chooses how ``train(resume_from_checkpoint=...)`` loads the weights; a
    callback could load them again afterwards, but the lenient load would still run first and
    log every renamed tensor as missing. FSDP and DeepSpeed checkpoints, and loads into
    another model, keep the Trainer's own loader (``upstream``). Checked with transformers 5.24.0.
    """
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled or model is not None:
        return upstream(checkpoint, model)
    reload_weights(trainer, checkpoint)


def load_best_model(trainer: Any, upstream: Callable[[], None]) -> None:
    """``Trainer._load_best_model()``, through :func:`reload_weights` (see there for why).

    ``load_best_model_at_end`` has no public hook for how the best checkpoint is loaded.
    FSDP and DeepSpeed keep the Trainer's own loader (``upstream``). Checked with transformers 5.24.0.
    """
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return upstream()
    logger.info("loading the best model by validation score (step %s)", trainer.state.best_global_step)
    reload_weights(trainer, trainer.state.best_model_checkpoint)
