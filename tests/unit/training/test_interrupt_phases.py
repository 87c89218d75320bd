"""interrupts.py before training: a signal stops the main process at once (and a stop whose
teardown hangs ends within the grace time); a forked worker ends on SIGTERM, removing the
part-written decode cache file it holds, and leaves a Ctrl-C to the main process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState

from finetune.training.interrupts import InterruptCallback, StopNow
from tests.helpers.cli import run_python


def _deliver() -> None:
    for _ in range(1000):  # bytecode boundaries for the handler to run at
        pass


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_before_training_a_signal_stops_at_once(signum: int) -> None:
    cb = InterruptCallback()
    try:
        with pytest.raises(StopNow) as stop:
            os.kill(os.getpid(), signum)
            _deliver()
        assert stop.value.signum == signum and cb.stopped_early == signum
        assert isinstance(stop.value, KeyboardInterrupt)  # libraries clean up as after a Ctrl-C
    finally:
        cb.restore()


def test_recording_lets_work_before_training_run_to_its_end() -> None:
    """LP-FT's probe solve: the signal is noted and the solve finishes; afterwards, before
    the fine-tune's first step, a signal stops at once again."""
    cb = InterruptCallback()
    try:
        with cb.recording():
            os.kill(os.getpid(), signal.SIGTERM)
            _deliver()
        assert cb.requested and cb.stopped_early is None
    finally:
        cb.restore()


def test_from_the_first_step_a_signal_waits_for_the_checkpoint() -> None:
    cb = InterruptCallback()
    try:
        cb.on_train_begin(None, TrainerState(global_step=0), TrainerControl())
        os.kill(os.getpid(), signal.SIGTERM)
        _deliver()
        assert cb.requested and cb.stopped_early is None
    finally:
        cb.restore()


WORKER = """
import os, signal, sys, time
from finetune.training.interrupts import InterruptCallback
folder = sys.argv[1]
cb = InterruptCallback()
pid = os.fork()
if pid == 0:  # a decode worker, writing a piece of the cache
    f = open(os.path.join(folder, "tmpab12cd34"), "wb")
    f.write(b"part of a piece")
    f.flush()
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches the whole group: the main process acts on it
    time.sleep(0.2)
    print("worker alive after Ctrl-C", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # the pool ending its workers
    time.sleep(5)
    print("worker alive after SIGTERM", flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("worker exit", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_a_forked_worker_ends_quietly_on_sigterm_removing_its_part_written_file(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text("{}")  # a datasets cache folder
    keep = tmp_path / "tmpzz99yy88"  # not open in the worker: another process's
    keep.write_bytes(b"x")
    result = run_python(WORKER, str(tmp_path))
    assert result.stdout.splitlines() == ["worker alive after Ctrl-C", "worker exit 143"], result.stderr
    assert "finetune:" not in result.stderr and "Traceback" not in result.stderr  # only the main process speaks
    assert not (tmp_path / "tmpab12cd34").exists() and keep.exists()


HUNG = """
import os, signal, time
from finetune.training.interrupts import InterruptCallback
import finetune.training.interrupts as interrupts
interrupts.STOP_GRACE = 1.0
cb = InterruptCallback(stop_line=lambda signum: f"stopped by signal {signum} before training started")
print(time.monotonic(), flush=True)  # the signal's time: the imports before it take long on a busy machine
try:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):
        pass
except KeyboardInterrupt:
    time.sleep(30)  # a library's teardown that never returns
print("not ended")
"""


def test_a_stop_whose_teardown_hangs_ends_after_the_grace_time_with_the_line() -> None:
    result = run_python(HUNG)
    ended = time.monotonic()
    assert result.returncode == 143 and "not ended" not in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "finetune: stopped by signal 15 before training started"
    assert ended - float(result.stdout.split()[0]) < 15  # the grace time (1 s here), not the 30 s teardown


SWALLOWED = """
import gc, os, signal, time
from finetune.training.interrupts import InterruptCallback, StopNow
cb = InterruptCallback(stop_line=lambda signum: f"stopped by signal {signum} before training started")

class Proxy:
    def __del__(self):  # a library's finalizer: the signal's handler runs in it
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass

Proxy()  # Python prints "Exception ignored in ..." and goes on
sent = time.monotonic()
try:
    while time.monotonic() - sent < 30:  # the decode pass, carrying on
        time.sleep(0.01)
    print("carried on")
except StopNow:
    print(f"stopped after {time.monotonic() - sent:.2f} s", flush=True)
    cb.restore()
"""


def test_a_stop_swallowed_by_a_finalizer_is_raised_again_in_the_main_thread() -> None:
    result = run_python(SWALLOWED)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Exception ignored in" in result.stderr  # the first StopNow was swallowed
    words = result.stdout.split()
    assert words[:2] == ["stopped", "after"] and float(words[2]) < 5, result.stdout  # STOP_AGAIN (1 s), not 30
