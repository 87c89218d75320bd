"""The tests' fork server (tests/helpers/forkserver.py) gives what a new process would: its own
pid, the environment and streams of the call, the exit code, and a kill at the timeout."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers.cli import ROOT, run_cli, run_python


def test_a_forked_command_is_a_process_of_its_own() -> None:
    shown = run_python(
        "import os, sys, finetune\n"
        "print(os.getpid(), os.getcwd(), os.environ['HF_HUB_OFFLINE'], sys.argv[1:])\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(3)",
        "a", "b",
    )
    pid, cwd, offline, *argv = shown.stdout.strip().split(maxsplit=3)
    assert shown.returncode == 3 and int(pid) != os.getpid() and cwd == str(ROOT) and offline == "1"
    assert argv == ["['a', 'b']"] and shown.stderr == "to stderr\n"
    failed = run_python("raise ValueError('boom')")
    assert failed.returncode == 1 and "ValueError: boom" in failed.stderr and "Traceback" in failed.stderr
    with pytest.raises(subprocess.TimeoutExpired):
        run_python("import time; time.sleep(60)", timeout=1)
    assert run_python("print('after a timeout')").stdout == "after a timeout\n"  # the server goes on
    helped = run_cli("validate", "--help")
    assert helped.returncode == 0 and "usage: finetune validate" in helped.stdout
