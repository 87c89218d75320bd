"""readers.py: the readers' lock goes with other readers, keeps a run out, and makes no file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.training.output_dir import OutputDirError, OutputLock
from finetune.training.readers import reading


@pytest.fixture
def a_run(tmp_path: Path) -> Path:
    """A run's folder (what the readers look at before anything else is read)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({"output_dir": str(out)}))
    return out


def test_readers_go_together_and_keep_a_run_out(a_run: Path) -> None:
    OutputLock(a_run).acquire().release()  # as any run of this version leaves its folder
    with reading(a_run), reading(a_run):  # two at once (an eval and a push, say)
        with pytest.raises(OutputDirError, match="in use by another finetune run .*a finetune push, export or eval"):
            OutputLock(a_run).acquire()
    lock = OutputLock(a_run).acquire()  # the readers are gone
    lock.release()


def test_a_reader_makes_no_lock_file(a_run: Path) -> None:
    """In a run written before the lock, a reader (which only reads) makes no file."""
    with reading(a_run):
        assert not (a_run / ".finetune.lock").exists()


def test_a_folder_that_is_no_run_is_read_without_a_lock(tmp_path: Path) -> None:
    with reading(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_run_refused_by_a_reader_does_not_name_a_dead_run(a_run: Path) -> None:
    """The details a killed run left name a process that is gone: not the one in the way."""
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    OutputLock(a_run).acquire().release()
    (a_run / ".finetune.lock.json").write_text(json.dumps(
        {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "2024-01-01T00:00:00", "command": "x"}
    ))
    with reading(a_run):
        with pytest.raises(OutputDirError) as err:
            OutputLock(a_run).acquire()
    assert f"pid {int(dead.stdout)}" not in str(err.value) and "a finetune push, export or eval reading it" in str(err.value)
