"""pyproject.toml: the wheel holds everything the package reads at run time, and a run from
an installed wheel (no checkout on the path) goes all the way to the model card."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.cli import write_recipe
from tests.helpers.images import make_image_folder

#: Files the package opens by path at run time; a wheel without them crashes after training.
DATA_FILES = (
    "finetune/publish/templates/model_card.md",
    "finetune/evaluation/evaluate_modules/accuracy/accuracy.py",
    "finetune/evaluation/evaluate_modules/f1/f1.py",
    "finetune/evaluation/evaluate_modules/precision/precision.py",
    "finetune/evaluation/evaluate_modules/recall/recall.py",
    "finetune/evaluation/evaluate_modules/top_k_accuracy/top_k_accuracy.py",
)


@pytest.mark.e2e
def test_a_run_from_the_installed_wheel_writes_the_card(tmp_path: Path, tiny_vit: Path) -> None:
    # Build from a copy of the sources: pip builds a local folder in place, and a build/
    # folder left in the checkout could carry stale files into later wheels.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "finetune", src / "finetune", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run(
        pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("finetune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(DATA_FILES) <= names, sorted(set(DATA_FILES) - names)

    site = tmp_path / "site"
    installed = subprocess.run(
        pip + ["install", "--no-deps", "--target", str(site), str(wheel)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]

    # A tiny run from a folder outside the checkout, with only the installed package on the path.
    work = tmp_path / "work"
    images = make_image_folder(work / "images", per_class=4)
    recipe = write_recipe(
        work / "recipe.json", tiny_vit, images, work / "out",
        training={"num_train_epochs": 1, "per_device_train_batch_size": 8, "save_strategy": "no",
                  "use_cpu": True, "disable_tqdm": True, "seed": 0},
    )
    run_env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    code = "import sys, finetune; print(finetune.__file__); from finetune.run import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "--recipe", str(recipe)],
        cwd=work, env=run_env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported = Path(result.stdout.splitlines()[0])
    assert imported.resolve() == (site / "finetune" / "__init__.py").resolve(), imported
    card = work / "out" / "README.md"
    assert card.is_file() and "test recipe" in card.read_text()
    assert (work / "out" / "eval_results.json").is_file()
