"""Every use of a dependency's private API, each with the upstream behaviour it works around and the versions checked."""

from __future__ import annotations

import numpy as np
import torch

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
    an autograd graph's saved tensors). Measured on a busy 2-core CPU (torch 2.14.1,
    64×3×224×224 uint8 batches, medians of 80 and 32 calls): the reused buffers take
    normalisation from 177 ms to 76 ms a batch, and a crop-and-flip training batch from
    282 ms to 142 ms.
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
