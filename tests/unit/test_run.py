"""The command line: the answers that load nothing (help, validate, a bad recipe's error) start fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT
from tests.helpers.cli import HEAVY, IMPORT_PROBE


def test_help_validate_and_a_bad_recipe_import_no_heavy_library(tmp_path: Path) -> None:
    """One fresh interpreter (the test process has torch loaded) runs them all, then says which
    heavy modules any of them imported."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({
        "description": "d", "model": {"name_or_path": "m"}, "data": {"dataset": "x"}, "output_dir": str(tmp_path / "o"),
        "training": {"learning_rat": 1e-3, "early_stopping_patience": 2, "eval_strategy": "no"},
    }))
    argvs = [
        ["--help"], ["train", "--help"], ["validate", "--help"], ["eval", "--help"], ["predict", "--help"],
        ["push", "--help"],
        ["validate", "recipes/quickstart.json"],
        ["validate", str(bad)],
        ["--recipe", str(bad)],  # `python finetune/run.py --recipe BAD.json`
        ["train", "--recipe", str(bad)],
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, json.dumps(argvs), json.dumps(HEAVY)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0] * 7 + [2] * 3, result.stderr[-3000:]
    # The bad recipe's problems, early stopping's included, were all reported without TrainingArguments.
    assert "did you mean 'learning_rate'?" in result.stderr
    assert "'training.early_stopping_patience' needs evaluations" in result.stderr
    assert report["loaded"] == []


_CLI = """
import logging, sys
import finetune.run as run

def main():
    import atexit
    atexit.register(lambda: open(sys.argv[2], "w").write("ran"))  # like a library's cleanup
    logging.getLogger("finetune").addHandler(logging.StreamHandler(sys.stderr))
    logging.getLogger("finetune").warning("last log line")
    sys.stdout.write("x" * 200_000)  # more than a pipe holds: must all arrive before the exit
    if sys.argv[1] == "raise":
        raise RuntimeError("boom")
    return int(sys.argv[1])

run.main = main
run.cli()
"""


def test_the_quick_exit_keeps_the_code_the_output_and_a_raised_error(tmp_path: Path) -> None:
    """cli() ends with os._exit after main returns: nothing written may be lost, the code is
    main's, exit handlers still run, and an exception takes the normal exit with its traceback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for arg, code in (("0", 0), ("2", 2), ("raise", 1)):
        marker = tmp_path / f"handler-{arg}"
        result = subprocess.run([sys.executable, "-c", _CLI, arg, str(marker)], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == code, result.stderr[-2000:]
        assert marker.read_text() == "ran"
        assert result.stdout == "x" * 200_000
        assert "last log line" in result.stderr
        assert ("RuntimeError: boom" in result.stderr) == (arg == "raise")
    # The real entry point: a bad recipe is exit code 2 with its one-line message.
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = subprocess.run(
        [sys.executable, "finetune/run.py", "validate", str(bad)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "'description' is required" in result.stderr
