"""SIGTERM and Ctrl-C: before training, stop at once; in training, checkpoint at a step every process agrees on within seconds, then stop; once training is over, stop at once and say what is saved."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from finetune.data import cache_store
from finetune.utils import compat
from finetune.utils.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED

#: The signals a run stops cleanly on: a cluster pre-empting the job, and Ctrl-C.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}
#: How long, at most, a signal waits in training before the processes agree to stop: they
#: agree at least this often (in seconds of training steps, as timed on the slowest
#: process), so that a pre-emption's grace period, which ends in SIGKILL, leaves time for
#: the checkpoint.
AGREE_SECONDS = 5.0
#: How long a stop before training may take to unwind before the process ends regardless.
STOP_GRACE = 10.0
#: How often, while a stop before training has not unwound, the stop is raised again in the
#: main thread if nothing is unwinding it (:meth:`InterruptCallback._watch`).
STOP_AGAIN = 1.0


def signal_name(signum: int) -> str:
    return _NAMES.get(signum) or signal.Signals(signum).name


def _say(line: str) -> None:
    """One line on stderr from a signal handler: a raw write, since the handler may run
    while the main thread is inside a write to the (buffered, non-reentrant) sys.stderr."""
    os.write(2, f"finetune: {line}\n".encode())


def _unwinding(error: BaseException | None) -> bool:
    """Whether ``error`` (a thread's exception in flight) is a :class:`StopNow`, or one that
    a library raised while handling one (its ``__context__`` chain has one)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, StopNow):
            return True
        seen.add(id(error))
        error = error.__context__
    return False


class Interrupted(RuntimeError):
    """A signal stopped the run; ``str()`` is one line saying what is saved and how to continue."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process a signal stopped."""
        return {signal.SIGTERM: EXIT_PREEMPTED, signal.SIGINT: EXIT_INTERRUPTED}.get(self.signum, 128 + self.signum)


class StopNow(KeyboardInterrupt):
    """Raised by the signal handler when a checkpoint has nothing to keep: before training
    (the decode pass, the model download, the feature pass) and once training is over (final
    save, evaluation, card, push), so the run stops where it is. A KeyboardInterrupt, as a
    Ctrl-C is: no library's ``except Exception`` swallows it, and those that clean up after
    a Ctrl-C (``datasets.map`` removes its part-written temporary file) do so for it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class InterruptCallback(TrainerCallback):
    """SIGTERM and Ctrl-C, in the three phases of a run.

    - Before training (from construction to the Trainer's ``on_train_begin``): there is
      nothing to checkpoint, so a signal raises :class:`StopNow` at once, wherever the main
      process is (decoding, downloading, computing features); the decode cache keeps what
      was decoded, for the rerun. ``stopped_early`` records the signal, so that the caller
      can tell the stop from whatever a library turned it into on the way up. Forked
      workers end quietly (``_in_worker``); only the main process says why.
    - In training: save a checkpoint at the end of a step and stop; a second signal stops
      at once. ``recording()`` puts a stretch of work before training (LP-FT's probe
      solve) in this mode too.
    - After ``training_over()``: a signal raises :class:`StopNow` again.

    One process stops at the end of the step the signal arrived in. Several processes must
    stop at the same step, or one would wait forever in a collective that the others have
    left, so they agree on it with a MAX all-reduce of the signal's number. That all-reduce
    and its ``.item()`` make the host wait for the GPU, so the processes do not agree every
    step, but at steps they all know in advance: steps where the Trainer is about to log,
    evaluate or save anyway, the end of each epoch, and steps spaced by time. The same
    all-reduce carries each process's seconds per step since the last agreement; from the
    slowest, every process computes the same next step to agree at, ``seconds`` of training
    later (at least the next step). A signalled multi-process run thus stops about
    ``seconds`` after the signal, or one step after it when a step takes longer.

    Launchers: ``torchrun`` and multi-process ``accelerate launch`` start their workers in
    sessions of their own, so Ctrl-C reaches a worker once, forwarded by the launcher (which
    kills workers that take more than 30 s to stop). A one-process ``accelerate launch``
    worker shares the terminal's process group and gets Ctrl-C directly, as do the forked
    workers of the decode pass.
    """

    def __init__(
        self, seconds: float | None = None, clock=time.monotonic, stop_line: Callable[[int], str] | None = None
    ) -> None:
        self.signum: int | None = None
        self._stop_line = stop_line
        self._stopped = threading.Event()
        self._worker_signals = 0
        self._again = False
        #: The signal that stopped the run before training (None: none did).
        self.stopped_early: int | None = None
        self.seconds = AGREE_SECONDS if seconds is None else seconds
        self._clock = clock
        self._phase = "before"
        self._pid = os.getpid()
        self._last: tuple[int, float] | None = None  # (step, time) of the last agreement
        self._next_agreement = 0
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

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Within: a signal is noted (``requested``), not raised, as in training, so the work
        runs to its end; the caller then stops cleanly."""
        phase, self._phase = self._phase, "training"
        try:
            yield
        finally:
            self._phase = phase

    def training_over(self) -> int | None:
        """From now on a signal stops the run at once (``StopNow``); returns the signal that
        arrived during training, if one did. (A handler runs between two bytecodes: before
        the phase changes it records its signal, after it raises; none is lost.)"""
        self._phase = "over"
        return self.signum

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            self._in_worker(signum)
            return
        if self._phase == "over":
            raise StopNow(signum)
        if self._again:  # the watch raising a swallowed stop again, not the user
            self._again = False
            raise StopNow(signum)
        if self.signum is not None:  # second signal: the user means it
            if self._phase == "training":
                _say(
                    f"{signal_name(signum)} again: stopping at once, without a checkpoint of this step; "
                    "run the same command again to continue from the last checkpoint"
                )
            # Dying of the signal itself (not a plain exit) lets a calling shell script see it.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        if self._phase == "before":
            self.stopped_early = signum
            self._watch(signum)
            raise StopNow(signum)
        again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
        _say(f"{signal_name(signum)}: saving a checkpoint at the end of this step, then stopping ({again} again stops at once)")

    def _in_worker(self, signum: int) -> None:
        """A forked worker of the main process (a ``datasets.map`` worker of the decode pass,
        a DataLoader worker): only the main process says why the run stops.

        Before training, a SIGTERM ends the worker at once: it is how a pool that the main
        process tears down ends its workers (``Pool.terminate``), and the pool waits for
        them. Raising instead would not do: ``datasets.map``'s worker turns an exception
        into a result and asks for the next task, and waits forever. A Ctrl-C reaches the
        whole process group; the worker leaves it to the main process, which ends the pool.
        In training a worker keeps serving batches until the main process has its
        checkpoint, and ends on a second signal (the main process's teardown). A worker
        that ends removes the part-written decode cache file it has open
        (:func:`finetune.data.cache_store.remove_open_temporaries`)."""
        if self._phase == "before":
            if signum != signal.SIGINT:
                cache_store.remove_open_temporaries()
                os._exit(128 + signum)
            return
        self._worker_signals += 1
        if self._worker_signals > 1:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _watch(self, signum: int) -> None:
        """Stopping before training unwinds through whatever the main process was in.

        The handler runs between two bytecodes of the main thread, which may be those of a
        ``__del__`` or a weakref callback (``datasets.map``'s worker pool and its ``Manager``
        proxies have many): Python prints "Exception ignored" there and goes on, and the
        decode pass would carry on as if no signal had come. So every :data:`STOP_AGAIN`
        seconds that the main thread is not unwinding a :class:`StopNow` (no exception in
        flight has one in its chain), the stop is raised there again. Should a library's
        teardown hang (a worker pool whose worker died holding its lock), the process ends
        after :data:`STOP_GRACE` seconds with the same line, the one ``stop_line`` gives,
        and exit code. ``restore()`` disarms it."""
        if self._stop_line is None:
            return
        line, done, main = self._stop_line(signum), self._stopped, threading.main_thread().ident

        def watch() -> None:
            deadline = time.monotonic() + STOP_GRACE
            while not done.wait(min(STOP_AGAIN, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    _say(line)
                    os._exit(128 + signum)
                if not _unwinding(compat.exception_in_flight(main)):
                    self._again = True
                    signal.pthread_kill(main, signum)  # a real signal: it also ends a blocking call

        threading.Thread(target=watch, name="finetune-stop-watch", daemon=True).start()

    @staticmethod
    def end_children(grace: float = 2.0) -> list[int]:
        """End the child processes a stop before training left behind, and wait for them;
        returns their pids.

        A signal can land while the decode pass's ``datasets.map`` starts its worker pool
        or the pool's ``Manager``. The ``Manager`` server is not a daemon process and ignores
        Ctrl-C; with its ``start()`` interrupted, nothing shuts it down, and the interpreter's
        exit (``multiprocess.util._exit_function``) joins it forever, after the stop's line was
        printed. Each child ends at SIGTERM (they inherit :meth:`_in_worker`, which exits at
        once before training); one that does not within ``grace`` seconds is killed."""
        children = [
            child
            for name in ("multiprocessing", "multiprocess")
            if name in sys.modules
            for child in sys.modules[name].active_children()
        ]
        for child in children:
            child.terminate()
        deadline = time.monotonic() + grace
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join(1.0)
        return [child.pid for child in children]

    def restore(self) -> None:
        self._stopped.set()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    @staticmethod
    def _processes() -> int:
        dist = torch.distributed
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _agreed(self, step: int) -> int:
        """The highest signal number any process got (0: none), and the step of the next
        agreement; a collective, so every process must call it at the same step."""
        dist = torch.distributed
        device = "cuda" if "nccl" in str(dist.get_backend()) else "cpu"
        now = self._clock()
        last_step, last_time = self._last if self._last is not None else (step, now)
        per_step = (now - last_time) / (step - last_step) if step > last_step else 0.0
        flag = torch.tensor([float(self.signum or 0), per_step], dtype=torch.float64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum, slowest = int(flag[0].item()), float(flag[1].item())
        if step > last_step or self._last is None:
            # The same numbers on every process, so the same next step on every process.
            ahead = int(self.seconds / slowest) if slowest > 0 else 1
            self._next_agreement = step + max(1, ahead)
        self._last = (step, self._clock())
        return signum

    def _check(self, control, step: int, boundary: bool):
        if self._processes() == 1:
            stop = self.requested
        elif boundary or step >= self._next_agreement:
            agreed = self._agreed(step)
            stop = agreed > 0
            if stop and self.signum is None:  # another process got it
                self.signum = agreed if agreed in _NAMES else signal.SIGTERM
        else:
            return control
        if stop:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        # From the first step there is a checkpoint to take: a signal waits for it.
        self._phase = "training"
        self._last = (state.global_step, self._clock())
        self._next_agreement = state.global_step + 1
        return control

    def on_step_end(self, args, state, control, **kwargs):
        # The Trainer's own flow callback ran before this one: the flags say what comes next.
        planned = control.should_log or control.should_evaluate or control.should_save
        return self._check(control, state.global_step, planned)

    def on_epoch_end(self, args, state, control, **kwargs):
        return self._check(control, state.global_step, True)
