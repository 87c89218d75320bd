"""Whether the machine has an accelerator: the one test that training, threads and evaluation share."""

from __future__ import annotations


def has_accelerator() -> bool:
    """A CUDA, MPS or XPU device is present: the one test of training, threads and eval, so
    they all see the same machine. torch is imported here, not with this module."""
    import torch

    xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available() or xpu
