"""The command line and a recipe's search block: validate checks it, train refuses it, and the
quick answers import no heavy library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from finetune.cli.main import main
from tests.helpers import ROOT
from tests.helpers.search import LR, save_recipe, search_recipe


def test_validate_checks_the_search_block_and_train_refuses_it(tmp_path: Path, capsys) -> None:
    bad = save_recipe(tmp_path / "bad.json", search_recipe("m", "d", tmp_path / "o", {"training.lr": LR}))
    assert main(["validate", str(bad)]) == 2
    assert "'search' key 'training.lr' is not a recipe key" in capsys.readouterr().err
    good = save_recipe(tmp_path / "good.json", search_recipe("m", "d", tmp_path / "o"))
    assert main(["validate", str(good)]) == 0
    assert main(["train", "--recipe", str(good)]) == 2
    assert f"run `finetune search {good} --trials N`" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_search_help_and_a_bad_search_block_import_no_heavy_library(tmp_path: Path) -> None:
    from tests.helpers.cli import HEAVY, IMPORT_PROBE

    bad = save_recipe(tmp_path / "bad.json", search_recipe("m", "d", tmp_path / "o", {"training.lr": LR}))
    argvs = [["search", "--help"], ["search", str(bad), "--trials", "3"], ["validate", str(bad)]]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE, json.dumps(argvs), json.dumps(HEAVY + ("optuna",))],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 2, 2], "loaded": []}, result.stderr[-3000:]
    assert result.stderr.count("'search' key 'training.lr' is not a recipe key") == 2
