"""A second SIGTERM or Ctrl-C stops a process at once, by that signal, with one line."""

from __future__ import annotations

import signal

import pytest

from tests.helpers.cli import run_python


@pytest.mark.e2e
@pytest.mark.parametrize(
    "first, signum", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)]
)
def test_second_signal_stops_at_once(first, signum) -> None:
    """The first signal asks for a checkpoint; a second one (training stuck in a long step)
    ends the process by that signal, so a calling shell script sees it, with one line."""
    script = (
        "import os, signal, time\n"
        "from transformers import TrainerState\n"
        "from finetune.training.interrupts import InterruptCallback\n"
        "cb = InterruptCallback()\n"
        "cb.on_train_begin(None, TrainerState(), None)  # in training: the first signal asks for a checkpoint\n"
        f"os.kill(os.getpid(), {int(first)})\n"
        "time.sleep(0.1)\n"
        "assert cb.requested\n"
        f"os.kill(os.getpid(), {int(signum)})\n"
        "time.sleep(5)\n"
        "print('still running')\n"
    )
    result = run_python(script)
    assert result.returncode == -signum, result.stderr[-2000:]
    assert "still running" not in result.stdout and "Traceback" not in result.stderr
    assert "again: stopping at once" in result.stderr
