"""The quickstart recipe (the README's first command), shortened, through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.data import digits


@pytest.mark.e2e
def test_quickstart_recipe_runs_and_labels_a_digit(tmp_path: Path, monkeypatch) -> None:
    """The README's first command, shortened (400 training images, two epochs) to fit the suite."""
    from transformers import pipeline

    from tests.helpers import ROOT
    from tests.helpers.cli import run_cli

    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "quickstart"
    result = run_cli(
        "--recipe", str(ROOT / "recipes" / "quickstart.json"),
        "--set", "data.max_train_samples=400",
        "--set", "training.num_train_epochs=2", "--set", "training.disable_tqdm=true",
        "--set", f"output_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "cache" / "models").is_dir()  # converted on first use
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_num_images"] == 360 and results["eval_accuracy"] > 0.3  # chance is 0.1
    digit = digits.load_dataset("builtin:digits")["test"][0]
    labels = pipeline("image-classification", model=str(out))(digit["image"], top_k=10)
    assert {row["label"] for row in labels} == {str(d) for d in range(10)}
