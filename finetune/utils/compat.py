"""Every use of a dependency's private API, each with the upstream behaviour it works around and the versions checked."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("finetune")

# --- Python


def exception_in_flight(thread_id: int) -> BaseException | None:
    """The exception another thread is handling now (in an ``except`` or ``finally`` block,
    or a ``with`` block's ``__exit__``, as it unwinds), or None.

    Works around: a thread can ask only about its own exception (``sys.exception()``); the
    stop watch (``training.interrupts``) must tell a main thread that is unwinding a stop
    from one that went on after a ``__del__`` swallowed it. ``sys._current_exceptions()``
    is the one call that reads another thread's; documented "for internal and specialized
    purposes", so it may change without notice: CPython 3.11 maps each thread id to an
    ``exc_info()`` triple (None's when idle), 3.12 and later to the exception itself.
    """
    found = sys._current_exceptions().get(thread_id)
    return found[1] if isinstance(found, tuple) else found


# --- datasets


def dataset_fingerprint(dataset) -> str:
    """The fingerprint ``datasets`` keeps for ``dataset``: a hash of the data it was loaded
    from and every transform applied since, the name it gives the cache files of a ``map``.

    Works around: ``decode`` names its own cache (``map(new_fingerprint=...)``) from this
    fingerprint plus the processor, so that a re-run with the same data reuses the decoded
    pixels and any change to the data or the processor decodes anew. ``datasets`` computes
    the fingerprint of every ``Dataset`` but exposes no public accessor for it (no property,
    no function of ``datasets.fingerprint`` returns a dataset's current one); hashing the
    dataset again with ``datasets.fingerprint.Hasher`` would read every row.
    Checked with datasets 5.2.0 (``Dataset._fingerprint``, a str set in ``__init__``).
    """
    return dataset._fingerprint


def physical_rows(dataset) -> np.ndarray | None:
    """For each logical row of ``dataset``, its row in the Arrow table ``dataset.data``;
    None when the two are the same (no ``select``/``shuffle``/``filter`` since the table).

    Works around: ``select()`` and friends leave the memory-mapped table alone and add an
    indices mapping, and ``FastRows`` gathers pixels straight from the table's buffers. The
    public ways to honour the mapping cost what ``FastRows`` exists to avoid: indexing the
    dataset goes row by row through the formatter (an Arrow ``take`` and a numpy array per
    row), and ``flatten_indices()`` rewrites the whole pixel cache to disk.
    Checked with datasets 5.2.0 (``Dataset._indices``: None, or a ``datasets.table.Table``
    whose column 0, unsigned integers, gives the physical row of each logical row).
    """
    mapping = dataset._indices
    return mapping.column(0).to_numpy() if mapping is not None else None


# --- torch


def storage_shared(tensor) -> bool:
    """Whether anything but ``tensor`` itself holds its storage: a view, a numpy array of
    it, an autograd graph that saved it. True when this torch cannot tell.

    Works around: CPU tensors have no caching allocator, and a float batch of 64 images at
    224 px (38 MB) is above glibc's largest mmap threshold, so a fresh one per batch is a
    new mapping and its page faults. ``BatchTransform`` reuses its output buffers instead,
    but only when no view of the last batch is alive; PyTorch's CUDA-graph trees ask the
    same question before reusing memory, with this same query. No public API counts the
    holders of a storage (``sys.getrefcount`` sees Python references only, not views or
    an autograd graph's saved tensors). The reused buffers make a CPU batch's normalisation,
    and a crop-and-flip training batch, much faster (bench/README.md has the figures).
    Checked with torch 2.14.1 (``torch._C._storage_Use_Count`` of ``UntypedStorage._cdata``:
    a tensor alone reads 2, its own reference and the storage's Python object, which the
    query makes and torch then keeps with the storage; each view adds one).
    """
    try:
        return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata) > 2
    except (AttributeError, RuntimeError):
        return True


# --- torchvision
# None: ``Transform.make_params`` is public since torchvision 0.21, the lower bound in
# pyproject.toml (it replaced the private ``_get_params``).

# --- transformers Trainer
#
# Checked with transformers 5.24.0; pyproject.toml bounds transformers below the next
# minor release, which the tests of this module must pass before the bound moves.


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


def train_sampler(sampler: Any, dataset: Any, upstream: Callable[[Any], Any]) -> Any:
    """``Trainer._get_train_sampler(train_dataset=None)``: ``sampler`` when there is one, else
    the Trainer's own (``upstream``).

    Upstream behaviour: the Trainer builds the training sampler itself from
    ``train_sampling_strategy`` (random, sequential, length-grouped); no argument or public
    method takes another sampler, and ``get_train_dataloader``, the public override, would
    have to rebuild the loader (workers' seeding, ``accelerator.prepare``) through the
    private ``_get_dataloader`` anyway. The Trainer then shards the sampler's order over the
    processes and calls ``set_epoch`` on it before each epoch (balance.BalancedSampler
    relies on both). Checked with transformers 5.24.0 (``get_train_dataloader`` passes
    ``sampler_fn=self._get_train_sampler``, called with the dataset).
    """
    return upstream(dataset) if sampler is None else sampler


def reload_weights(trainer: Any, checkpoint: str, load_adapters: Callable[[Any, str], bool] | None = None) -> None:
    """Load a checkpoint's weights into ``trainer.model`` with every key converted and checked.

    Upstream behaviour: transformers 5 writes checkpoints with a model's legacy key names
    (ViT's ``attention.attention.key`` for the ``k_proj`` it holds in memory) but reads them
    back, for resuming and for ``load_best_model_at_end``, with a plain
    ``load_state_dict(strict=False)``, which silently skips every renamed tensor: training
    would go on from the base model's weights, and the "best" model would be the last one.
    ``from_pretrained`` applies the key conversion; copying its tensors with ``strict=True``
    makes any mismatch an error instead. Checked with transformers 5.24.0.

    A peft-wrapped model (``strategy: lora``) has checkpoints of its adapters and head
    alone, under peft's own names: ``load_adapters(model, checkpoint)`` (the trainer passes
    ``models.lora``'s loader, which loads them just as strictly) takes those and returns True.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if load_adapters is not None and load_adapters(model, checkpoint):
        return
    fresh = type(model).from_pretrained(checkpoint, config=model.config)
    model.load_state_dict(fresh.state_dict(), strict=True)
    logger.info("loaded weights from %s", checkpoint)


def load_from_checkpoint(
    trainer: Any, checkpoint: str, model: Any, upstream: Callable[..., None],
    load_adapters: Callable[[Any, str], bool] | None = None,
) -> None:
    """``Trainer._load_from_checkpoint(resume_from_checkpoint, model=None)``, through :func:`reload_weights`.

    No public API chooses how ``train(resume_from_checkpoint=...)`` loads the weights; a
    callback could load them again afterwards, but the lenient load would still run first and
    log every renamed tensor as missing. FSDP and DeepSpeed checkpoints, and loads into
    another model, keep the Trainer's own loader (``upstream``). Checked with transformers 5.24.0.
    """
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled or model is not None:
        return upstream(checkpoint, model)
    reload_weights(trainer, checkpoint, load_adapters)


def load_best_model(
    trainer: Any, upstream: Callable[[], None], load_adapters: Callable[[Any, str], bool] | None = None
) -> None:
    """``Trainer._load_best_model()``, through :func:`reload_weights` (see there for why).

    ``load_best_model_at_end`` has no public hook for how the best checkpoint is loaded.
    FSDP and DeepSpeed keep the Trainer's own loader (``upstream``). Checked with transformers 5.24.0.
    """
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return upstream()
    logger.info("loading the best model by validation score (step %s)", trainer.state.best_global_step)
    reload_weights(trainer, trainer.state.best_model_checkpoint, load_adapters)


def dcp_extents(folder: str) -> dict[str, int]:
    """For a ``torch.distributed.checkpoint`` folder (FSDP's sharded state dict), each data
    file its ``.metadata`` names and the length that file must have at least.

    Works around: a checkpoint counts as whole only when every file it needs is whole, and
    the public ``FileSystemReader.read_metadata()`` gives the metadata, whose
    ``storage_data`` maps each tensor to where it lies, but the values are the private
    ``_StorageInfo`` (``relative_path``, ``offset``, ``length``); no public call checks a
    checkpoint without loading every tensor into a model of the right shape.
    Checked with torch 2.14 (``torch.distributed.checkpoint.filesystem._StorageInfo``).
    Raises what reading the metadata raises (a cut-off or missing ``.metadata``).
    """
    from torch.distributed.checkpoint import FileSystemReader

    extents: dict[str, int] = {}
    for info in FileSystemReader(folder).read_metadata().storage_data.values():
        end = int(info.offset) + int(info.length)
        extents[info.relative_path] = max(extents.get(info.relative_path, 0), end)
    return extents
