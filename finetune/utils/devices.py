"""The machine and the launch: whether there is an accelerator, and whether FSDP or DeepSpeed shard the weights."""

from __future__ import annotations

import os


def has_accelerator() -> bool:
    """A CUDA, MPS or XPU device is present: the one test of training, threads and eval, so
    they all see the same machine. torch is imported here, not with this module."""
    import torch

    xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available() or xpu


def sharded(args=None) -> bool:
    """Whether FSDP or DeepSpeed shard the weights (the training arguments, or accelerate's
    launcher settings say so)."""
    shards = args is not None and (bool(getattr(args, "fsdp", None)) or bool(getattr(args, "deepspeed", None)))
    shards = shards or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    return shards or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
