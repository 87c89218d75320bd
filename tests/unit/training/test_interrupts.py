"""interrupts.py: before training a signal stops the run at once; in training processes agree on
the stopping step only at steps they all know in advance, spaced by time; once training is over
a signal stops the run at once."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from finetune.training.interrupts import InterruptCallback, Interrupted, StopNow


class Clock:
    """A pretend clock for the callback: each step takes ``step_seconds``."""

    def __init__(self, step_seconds: float = 1.0) -> None:
        self.now, self.step_seconds = 0.0, step_seconds

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def callback(clock):
    """A callback in training (after the Trainer's on_train_begin at step 0), agreeing every 10 s."""
    cb = InterruptCallback(seconds=10.0, clock=clock)
    cb.on_train_begin(None, TrainerState(global_step=0), TrainerControl())
    yield cb
    cb.restore()


class Ranks:
    """Two pretend gloo ranks; the other one gets SIGTERM at step ``others_requested_from``."""

    def __init__(self, others_requested_from: int | None, signum: int = signal.SIGTERM) -> None:
        self.others_requested_from = others_requested_from
        self.signum = signum
        self.now = 0
        self.calls: list[int] = []  # the steps at which an all-reduce ran

    def all_reduce(self, flag, op=None) -> None:
        self.calls.append(self.now)
        if self.others_requested_from is not None and self.now >= self.others_requested_from:
            flag[0] = max(float(self.signum), flag[0].item())


def _fake_ranks(monkeypatch, others_requested_from: int | None, signum: int = signal.SIGTERM) -> Ranks:
    dist = torch.distributed
    ranks = Ranks(others_requested_from, signum)

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    monkeypatch.setattr(dist, "all_reduce", ranks.all_reduce)
    return ranks


def _run(callback, ranks: Ranks | None, steps: int, planned: dict[int, str], clock: Clock | None = None) -> int | None:
    """Call on_step_end for steps 1..steps (each ``clock.step_seconds`` long), with the
    Trainer's flags set at ``planned`` steps; the step at which training was told to stop."""
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    for step in range(1, steps + 1):
        if clock is not None:
            clock.now += clock.step_seconds
        if ranks is not None:
            ranks.now = step
        control, state = TrainerControl(), TrainerState(global_step=step)
        if step in planned:
            setattr(control, planned[step], True)
        control = callback.on_step_end(args, state, control)
        if control.should_training_stop:
            assert control.should_save
            return step
    return None


def test_ranks_agree_at_planned_steps_and_every_ten_seconds_of_steps(callback, clock, monkeypatch) -> None:
    ranks = _fake_ranks(monkeypatch, others_requested_from=None)
    assert _run(callback, ranks, 25, {7: "should_save", 13: "should_evaluate", 15: "should_log"}, clock) is None
    # Step 1 measures a step (1 s): the next agreement is 10 s of steps after the last one.
    assert ranks.calls == [1, 7, 13, 15, 25]  # not one host-device sync per step


def test_sigterm_on_another_rank_stops_every_rank_within_the_bound(callback, clock, monkeypatch) -> None:
    ranks = _fake_ranks(monkeypatch, others_requested_from=12)
    assert _run(callback, ranks, 40, {}, clock) == 21
    assert callback.requested and ranks.calls == [1, 11, 21]


def test_slow_steps_agree_at_every_step(monkeypatch) -> None:
    """Steps longer than the bound (a large model): every step is an agreement, so the stop
    comes at the end of the step after the signal, not ten steps (minutes) later."""
    clock = Clock(step_seconds=40.0)
    cb = InterruptCallback(seconds=5.0, clock=clock)
    try:
        cb.on_train_begin(None, TrainerState(global_step=100), TrainerControl())  # resumed at step 100
        ranks = _fake_ranks(monkeypatch, others_requested_from=103)
        args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
        for step in range(101, 110):
            clock.now += clock.step_seconds
            ranks.now = step
            control = cb.on_step_end(args, TrainerState(global_step=step), TrainerControl())
            if control.should_training_stop:
                break
        assert step == 103 and ranks.calls == [101, 102, 103]
    finally:
        cb.restore()


def test_the_slowest_process_sets_when_all_agree_next(callback, clock, monkeypatch) -> None:
    """Each process measures its own steps; the MAX all-reduce gives all of them the slowest's
    time per step, so they all compute the same next step (here: the other rank's 5 s steps)."""
    ranks = _fake_ranks(monkeypatch, others_requested_from=None)
    original = ranks.all_reduce

    def slower_elsewhere(flag, op=None) -> None:
        original(flag, op)
        flag[1] = max(flag[1].item(), 5.0)

    monkeypatch.setattr(torch.distributed, "all_reduce", slower_elsewhere)
    assert _run(callback, ranks, 12, {}, clock) is None
    assert ranks.calls == [1, 3, 5, 7, 9, 11]


def test_epoch_end_is_always_an_agreed_step(callback, monkeypatch) -> None:
    ranks = _fake_ranks(monkeypatch, others_requested_from=0)
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    control = callback.on_epoch_end(args, TrainerState(global_step=3), TrainerControl())
    assert ranks.calls == [0] and control.should_training_stop and control.should_save


def test_one_process_needs_no_collective(callback, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("a single process must not all-reduce")

    monkeypatch.setattr(torch.distributed, "all_reduce", forbidden)
    assert not torch.distributed.is_initialized()
    assert _run(callback, None, 5, {}) is None
    callback.requested = True  # as the SIGTERM handler does
    assert _run(callback, None, 3, {}) == 1  # the end of the very next step


def test_ctrl_c_on_another_rank_gives_every_rank_its_exit_code(callback, clock, monkeypatch) -> None:
    ranks = _fake_ranks(monkeypatch, others_requested_from=3, signum=signal.SIGINT)
    assert _run(callback, ranks, 25, {}, clock) == 11
    assert callback.signum == signal.SIGINT
    assert Interrupted("stopped", callback.signum).exit_code == 130
    assert Interrupted("stopped", signal.SIGTERM).exit_code == 143


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_training_asks_for_a_checkpoint_and_after_training_stops_at_once(callback, signum) -> None:
    os.kill(os.getpid(), signum)  # the handler runs before the next line
    assert callback.signum == signum
    assert _run(callback, None, 3, {}) == 1  # checkpoint and stop at the end of the step
    callback.training_over()
    with pytest.raises(StopNow) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # give the interpreter a bytecode boundary to run the handler at
            pass
    assert stop.value.signum == signal.SIGTERM


def test_restore_puts_back_the_previous_handlers() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    cb = InterruptCallback()
    assert signal.getsignal(signal.SIGINT) == cb._handle
    cb.restore()
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before
