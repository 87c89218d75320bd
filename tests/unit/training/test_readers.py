"""readers.py: `finetune push`, `export` and `eval` are refused while a run holds its folder's lock, go together, and keep a run out while they read."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.cli.main import main
from finetune.training.output_dir import OutputDirError, OutputLock

ROOT = Path(__file__).resolve().parents[3]

#: Locks the folder in its argument as a run does, says so, and waits to be killed.
HOLDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from finetune.training.output_dir import OutputLock\n"
    "lock = OutputLock(Path(sys.argv[1])).acquire()  # kept: a FileLock lets go when collected\n"
    "lock.write_holder()\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def a_run(tmp_path: Path) -> Path:
    """A run's folder (what the readers look at before anything else is read)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({"output_dir": str(out)}))
    return out


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """A run's folder (with an export inside), locked by a run in another process; yields
    (the folder, that process)."""
    out = tmp_path_factory.mktemp("held") / "out"
    (out / "onnx").mkdir(parents=True)
    (out / "recipe.json").write_text(json.dumps({"output_dir": str(out)}))
    (out / "onnx" / "export_report.json").write_text("{}")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield out, holder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


@pytest.mark.parametrize(
    "argv",
    [
        ["push", "{out}", "--repo-id", "me/model"],
        ["export", "{out}"],
        ["eval", "{out}", "--data", "builtin:digits"],
        ["eval", "{out}/onnx", "--data", "builtin:digits"],  # an export inside the run: the run's lock
    ],
    ids=["push", "export", "eval", "eval-of-an-export"],
)
def test_readers_are_refused_while_a_run_holds_the_folder(held, argv, capsys) -> None:
    a_run, holder = held
    assert main([a.format(out=a_run) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"'{a_run}' is in use by a finetune run (pid {holder.pid} on {socket.gethostname()}, started" in lines[0]
    assert "wait for it to finish, then run this command again" in lines[0]


def test_readers_go_together_and_keep_a_run_out(a_run: Path) -> None:
    from finetune.training.readers import reading

    OutputLock(a_run).acquire().release()  # as any run of this version leaves its folder
    with reading(a_run), reading(a_run):  # two at once (an eval and a push, say)
        with pytest.raises(OutputDirError, match="in use by another finetune run .*a finetune push, export or eval"):
            OutputLock(a_run).acquire()
    lock = OutputLock(a_run).acquire()  # the readers are gone
    lock.release()


def test_a_reader_makes_no_lock_file(a_run: Path) -> None:
    """In a run written before the lock, a reader (which only reads) makes no file."""
    from finetune.training.readers import reading

    with reading(a_run):
        assert not (a_run / ".finetune.lock").exists()


def test_a_folder_that_is_no_run_is_read_without_a_lock(tmp_path: Path) -> None:
    from finetune.training.readers import reading

    with reading(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []
