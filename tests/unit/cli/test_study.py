"""`finetune study`: command-line options override the study block key by key, and its quick answers import no heavy library."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.recipe import RecipeError
from tests.helpers import ROOT
from tests.helpers.cli import HEAVY
from tests.helpers.study import base


def _args(recipe: Path, *argv: str) -> argparse.Namespace:
    from finetune.cli.main import build_parser

    return build_parser().parse_args(["study", str(recipe), *argv])


def test_command_line_options_override_the_study_block_key_by_key(tmp_path: Path) -> None:
    from finetune.cli.study import study_recipe

    path = tmp_path / "r.json"
    path.write_text(json.dumps(base(grid={"model.strategy": ["linear_probe", "full"], "data.samples_per_class": [5]}, seeds=3)))
    recipe = study_recipe(_args(path, "--grid", "data.samples_per_class=1,10", "--seeds", "2", "--scratch"))
    assert recipe.study.grid == {"model.strategy": ["linear_probe", "full"], "data.samples_per_class": [1, 10]}
    assert recipe.study.seeds == 2 and recipe.study.scratch
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({k: v for k, v in base().items() if k != "study"}))
    recipe = study_recipe(_args(plain, "--grid", "training.learning_rate=1e-3,1e-2", "--grid", "model.strategy=full"))
    assert recipe.study.grid == {"training.learning_rate": [1e-3, 1e-2], "model.strategy": ["full"]}
    assert recipe.study.seeds == 1 and not recipe.study.scratch
    with pytest.raises(RecipeError, match="expected KEY=V1,V2"):
        study_recipe(_args(plain, "--grid", "model.strategy"))
    with pytest.raises(RecipeError, match="did you mean 'learning_rate'"):
        study_recipe(_args(plain, "--grid", "training.learning_rat=1,2"))


def test_study_help_and_a_bad_grid_import_no_heavy_library(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**base(grid={"model.strategy": ["ful"]}), "output_dir": str(tmp_path / "o")}))
    probe = (
        "import json, sys\nfrom finetune.run import main\ncodes = []\n"
        "for argv in ([['study', '--help'], ['study', sys.argv[1]]]):\n"
        "    try:\n        codes.append(main(argv))\n    except SystemExit as e:\n        codes.append(e.code)\n"
        f"print(json.dumps({{'codes': codes, 'loaded': [m for m in {list(HEAVY)!r} if m in sys.modules]}}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", probe, str(bad)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 2], "loaded": []}, result.stderr[-2000:]
    assert "'study.grid.model.strategy' value \"ful\"" in result.stderr
    assert not (tmp_path / "o").exists()
