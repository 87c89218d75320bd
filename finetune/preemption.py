"""SIGTERM (a cluster pre-empting the job): write a checkpoint at a step every process agrees on, then stop."""

from __future__ import annotations

import os
import signal
import threading

import torch
from transformers import TrainerCallback


class Preempted(RuntimeError):
    """SIGTERM arrived: a checkpoint was written and training stopped; re-run to continue."""


class PreemptionCallback(TrainerCallback):
    """On SIGTERM, save a checkpoint at the end of a step and stop. A second SIGTERM exits at once.

    One process stops at the end of the step the signal arrived in. Several processes must
    stop at the same step, or one would wait forever in a collective that the others have
    left, so they agree on it with a MAX all-reduce of the flag. That all-reduce and its
    ``.item()`` make the host wait for the GPU, so the ranks agree only at steps they all
    know in advance, from the global step they share: every ``every`` steps, and at steps where
    the Trainer is about to log, evaluate or save anyway, and at the end of each epoch. A
    pre-empted multi-process run thus stops at most ``every`` steps after the signal.
    """

    def __init__(self, every: int = 10) -> None:
        self.requested = False
        self.every = max(1, every)
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: the user means it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    @staticmethod
    def _processes() -> int:
        dist = torch.distributed
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _agreed(self) -> bool:
        """Whether any process got SIGTERM; a collective, so every process must call it at the same step."""
        dist = torch.distributed
        device = "cuda" if "nccl" in str(dist.get_backend()) else "cpu"
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _check(self, control, boundary: bool):
        if self._processes() == 1:
            stop = self.requested
        elif boundary:
            stop = self._agreed()
        else:
            return control
        if stop:
            self.requested = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        # The Trainer's own flow callback ran before this one: the flags say what comes next.
        planned = control.should_log or control.should_evaluate or control.should_save
        return self._check(control, planned or state.global_step % self.every == 0)

    def on_epoch_end(self, args, state, control, **kwargs):
        return self._check(control, True)
