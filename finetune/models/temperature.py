"""A temperature folded into a classification head: its Linear's weight and bias divided by T, so the model's logits become logits / T.

For a Linear head, (W x + b) / T = (W / T) x + b / T exactly, so the saved model, the
``pipeline()`` that loads it and its ONNX export all return the temperature-scaled
probabilities with no extra code. That holds only when the Linear's output *is* the model's
logits: :func:`output_is_logits` checks it with one forward pass, for heads where something
follows the Linear (DeiT's averaged distillation head) or where it is not the last layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def fold(head: nn.Linear, temperature: float) -> None:
    """Divide ``head``'s weight and bias by ``temperature``, in place."""
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)


@contextlib.contextmanager
def folded(head: nn.Linear | None, temperature: float | None) -> Iterator[None]:
    """Run the block with ``temperature`` folded into ``head``; its weight and bias come back
    bit for bit afterwards (a copy, not a multiplication that would round). Nothing happens
    when either is None."""
    if head is None or temperature is None:
        yield
        return
    with torch.no_grad():
        saved = [p.detach().clone() for p in (head.weight, head.bias) if p is not None]
    fold(head, temperature)
    try:
        yield
    finally:
        with torch.no_grad():
            for param, original in zip([p for p in (head.weight, head.bias) if p is not None], saved):
                param.copy_(original)


def output_is_logits(model: nn.Module, head: nn.Linear, size: tuple[int, int]) -> bool:
    """Whether ``head``'s output is the model's logits, from one forward pass in eval mode of
    two random images of ``size`` (drawn from a generator of their own: the run's random state
    is not touched). The model's mode is put back."""
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _module, _args, output: seen.append(output.detach()))
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, *size, generator=generator).to(param.device, param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(pixel_values=pixels).logits
    finally:
        hook.remove()
        model.train(was_training)
    if len(seen) != 1 or seen[0].shape != logits.shape:
        return False
    return torch.allclose(seen[0].float(), logits.float(), rtol=1e-5, atol=1e-6)
