"""`finetune push`, `export` and `eval` while a run (another process) holds the folder's lock: refused in one line naming it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from finetune.cli.main import main
from tests.helpers import ROOT

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
