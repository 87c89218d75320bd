"""Test-time augmentation: a model's outputs on every view of a batch, averaged as probabilities.

The views are :class:`finetune.data.TestViews` (``evaluation.tta``). Averaging happens on
probabilities, not logits: the prediction is the mean of the per-view softmax (for a
multi-label model, of the per-view sigmoids), as in the ten-crop evaluations of Krizhevsky
et al. 2012 and Szegedy et al. 2015. The mean goes back into the pipeline as logits that the
same activation maps onto it exactly (log p for softmax, logit p for sigmoid), so the metric
accumulator, the reports and the loss (the cross-entropy of the averaged prediction) take
it as they take one view's logits.

An :class:`Activation` is the map from logits to probabilities and back; a calibrated model
(e.g. temperature scaling) averages its calibrated probabilities by passing an activation
that applies the calibration before the softmax.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from finetune.data import TestViews, multi_label


@dataclass(frozen=True)
class Activation:
    """Logits → probabilities (``forward``), and probabilities → logits that ``forward`` maps
    back onto them (``inverse``)."""

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    inverse: Callable[[torch.Tensor], torch.Tensor]


def _log(p: torch.Tensor) -> torch.Tensor:
    # The smallest positive float keeps a class no view gave any probability finite.
    return p.clamp_min(torch.finfo(p.dtype).tiny).log()


def _logit(p: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(p.dtype).eps
    return torch.logit(p, eps=eps)


SOFTMAX = Activation("softmax", lambda z: z.float().softmax(-1), _log)
SIGMOID = Activation("sigmoid", lambda z: z.float().sigmoid(), _logit)


def activation_for(config) -> Activation:
    """The activation a model's probabilities come from: the sigmoid for a multi-label model
    (its config's ``problem_type``, or config.json as a dict), the softmax for any other."""
    return SIGMOID if multi_label.is_multi_label(config) else SOFTMAX


def average(view_logits: Iterable[torch.Tensor], activation: Activation = SOFTMAX) -> torch.Tensor:
    """The mean over the views of ``activation(logits)``: V tensors of N×C logits (a list, a
    V×N×C tensor, or a generator that computes each when asked) → N×C."""
    total, count = None, 0
    for logits in view_logits:
        p = activation.forward(logits)
        total = p.clone() if total is None else total.add_(p)
        count += 1
    if total is None:
        raise ValueError("no views to average")
    return total.div_(count)


class TestTimeAugmentation:
    """A model's averaged prediction over the views of one ``evaluation.tta`` mode."""

    __test__ = False  # not a pytest class, despite its name

    def __init__(self, mode: str, activation: Activation = SOFTMAX) -> None:
        self.views = TestViews(mode)
        self.activation = activation
        #: The temperature folded into the scored model's head, while it is (None: none): the
        #: views' probabilities before it are averaged too (:meth:`scores`).
        self.temperature: float | None = None
        #: One view whose :meth:`logits` are the model's own (see :meth:`each_view`).
        self._own_logits = False

    def each_view(self) -> Iterator[TestTimeAugmentation]:
        """One single-view augmentation per view, in order, whose :meth:`logits` are the
        model's own logits on that view (not a log-softmax, which a probability that underflows
        would clamp: a temperature fit divides them)."""
        for view in self.views:
            one = copy.copy(self)
            one.views = copy.copy(self.views)
            one.views.views = [view]
            one.temperature = None
            one._own_logits = True
            yield one

    @property
    def mode(self) -> str:
        return self.views.mode

    def describe(self) -> str:
        """What ran, for the logs, the reports and the card."""
        if len(self.views) == 1:
            return "none (one view per image)"
        return f"{self.views.describe()}, {self.activation.name} averaged over the views"

    def probabilities(self, forward: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
        """The averaged probabilities (N×C, float32) of ``forward`` (a normalised batch → its
        logits) over the views of ``pixels``, one view's batch at a time (the memory of one
        batch, not of V)."""
        return average((forward(self.views.apply(pixels, view)) for view in self.views), self.activation)

    def logits(self, forward: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
        """Logits that the activation maps onto the averaged probabilities."""
        if self._own_logits:
            (view,) = self.views
            return forward(self.views.apply(pixels, view)).float()
        return self.activation.inverse(self.probabilities(forward, pixels))

    def scores(
        self, forward: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`logits`, and with a :attr:`temperature` the logits of the probabilities
        averaged before it (each view's logits times T), from the same forward passes."""
        if self.temperature is None:
            return self.logits(forward, pixels), None
        t = self.temperature
        views = [forward(self.views.apply(pixels, view)) for view in self.views]  # V×N×C: small
        calibrated = average(views, self.activation)
        uncalibrated = average((z.float() * t for z in views), self.activation)
        return self.activation.inverse(calibrated), self.activation.inverse(uncalibrated)
