"""SIGTERM and Ctrl-C: checkpoint at a step every process agrees on and stop; once training is over, stop at once and say what is saved."""

from __future__ import annotations

import os
import signal
import threading

import torch
from transformers import TrainerCallback

from finetune.utils.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED

#: The signals a run stops cleanly on: a cluster pre-empting the job, and Ctrl-C.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


def signal_name(signum: int) -> str:
    return _NAMES.get(signum) or signal.Signals(signum).name


def _say(line: str) -> None:
    """One line on stderr from a signal handler: a raw write, since the handler may run
    while the main thread is inside a write to the (buffered, non-reentrant) sys.stderr."""
    os.write(2, f"finetune: {line}\n".encode())


class Interrupted(RuntimeError):
    """A signal stopped the run; ``str()`` is one line saying what is saved and how to continue."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process a signal stopped."""
        return {signal.SIGTERM: EXIT_PREEMPTED, signal.SIGINT: EXIT_INTERRUPTED}.get(self.signum, 128 + self.signum)


class StopNow(BaseException):
    """Raised by the signal handler once training is over (final save, evaluation, card,
    push): nothing is left that a checkpoint could keep, so the run stops where it is.
    A BaseException, as KeyboardInterrupt is, so that no library's ``except Exception``
    swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class InterruptCallback(TrainerCallback):
    """On SIGTERM or Ctrl-C, save a checkpoint at the end of a step and stop; a second signal
    stops at once. After ``training_over()``, a signal raises ``StopNow`` instead.

    One process stops at the end of the step the signal arrived in. Several processes must
    stop at the same step, or one would wait forever in a collective that the others have
    left, so they agree on it with a MAX all-reduce of the signal's number. That all-reduce
    and its ``.item()`` make the host wait for the GPU, so the ranks agree only at steps they
    all know in advance, from the global step they share: every ``every`` steps, and at steps
    where the Trainer is about to log, evaluate or save anyway, and at the end of each epoch.
    A signalled multi-process run thus stops at most ``every`` steps after the signal.

    Launchers: ``torchrun`` and multi-process ``accelerate launch`` start their workers in
    sessions of their own, so Ctrl-C reaches a worker once, forwarded by the launcher (which
    kills workers that take more than 30 s to stop). A one-process ``accelerate launch``
    worker shares the terminal's process group and gets Ctrl-C directly.
    """

    def __init__(self, every: int = 10) -> None:
        self.signum: int | None = None
        self.every = max(1, every)
        self._over = False
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    @property
    def requested(self) -> bool:
        """Whether a signal arrived (on this process, or on another as agreed)."""
        return self.signum is not None

    @requested.setter
    def requested(self, value: bool) -> None:
        self.signum = (self.signum or signal.SIGTERM) if value else None

    def training_over(self) -> int | None:
        """From now on a signal stops the run at once (``StopNow``); returns the signal that
        arrived during training, if one did. (A handler runs between two bytecodes: before
        the flag is set it records its signal, after it raises; none is lost.)"""
        self._over = True
        return self.signum

    def _handle(self, signum, frame) -> None:
        if self._over:
            raise StopNow(signum)
        if self.signum is not None:  # second signal: the user means it
            _say(
                f"{signal_name(signum)} again: stopping at once, without a checkpoint of this step; "
                "run the same command again to continue from the last checkpoint"
            )
            # Dying of the signal itself (not a plain exit) lets a calling shell script see it.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
        _say(f"{signal_name(signum)}: saving a checkpoint at the end of this step, then stopping ({again} again stops at once)")

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    @staticmethod
    def _processes() -> int:
        dist = torch.distributed
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _agreed(self) -> int:
        """The highest signal number any process got (0: none); a collective, so every
        process must call it at the same step."""
        dist = torch.distributed
        device = "cuda" if "nccl" in str(dist.get_backend()) else "cpu"
        flag = torch.tensor([float(self.signum or 0)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def _check(self, control, boundary: bool):
        if self._processes() == 1:
            stop = self.requested
        elif boundary:
            agreed = self._agreed()
            stop = agreed > 0
            if stop and self.signum is None:  # another process got it
                self.signum = agreed if agreed in _NAMES else signal.SIGTERM
        else:
            return control
        if stop:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        # The Trainer's own flow callback ran before this one: the flags say what comes next.
        planned = control.should_log or control.should_evaluate or control.should_save
        return self._check(control, planned or state.global_step % self.every == 0)

    def on_epoch_end(self, args, state, control, **kwargs):
        return self._check(control, True)
