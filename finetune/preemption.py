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
    """On SIGTERM (cluster pre-emption), save a checkpoint at the end of the current step
    and stop. All ranks agree on the step (a MAX all-reduce of the flag), so no process
    waits in a collective that the others have left. A second SIGTERM exits at once."""

    def __init__(self) -> None:
        self.requested = False
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

    def _agreed(self) -> bool:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
            device = "cuda" if backend == "nccl" else "cpu"
            flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            return bool(flag.item())
        return self.requested

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed():
            self.requested = True
            control.should_save = True
            control.should_training_stop = True
        return control
