"""Multi-label runs end to end on generated 2×2 colour-tile images: every strategy trains, the
saved model says sigmoid, thresholds come from the validation piece, and predict, eval and the
card read them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finetune.cli.main import main
from finetune.data import multi_label
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.multi_label import write_multi_label_set

EXPECTED_METRICS = ("eval_map", "eval_f1_micro", "eval_f1_macro", "eval_exact_match")


def _recipe(base: Path, model_path: Path, dataset: str, out: Path, strategy: str = "full", **extra) -> Path:
    training = {"num_train_epochs": 6, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "seed": 0,
                "use_cpu": True, "disable_tqdm": True, "save_strategy": "no", **extra.pop("training", {})}
    return write_recipe(
        base / f"{out.name}.json", model_path, dataset, out,
        model={"name_or_path": str(model_path), "strategy": strategy, **extra.pop("model", {})},
        data={"dataset": dataset, "validation_fraction": 0.25, "augment": {"crop_scale": None, "hflip": False},
              **extra.pop("data", {})},
        training=training, expected=None, **extra,
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_vit):
    """A full fine-tune of the tiny ViT on a CSV of ';'-joined labels, through the real command line."""
    base = tmp_path_factory.mktemp("multi-label")
    found = write_multi_label_set(base / "set", kind="csv", n_train=64, n_test=24)
    out = base / "full"
    result = run_cli("--recipe", str(_recipe(base, tiny_vit, found.dataset, out)))
    assert result.returncode == 0, result.stderr[-3000:]
    return found, out, result


def test_a_csv_of_label_lists_trains_a_sigmoid_model_with_tuned_thresholds(full_run):
    found, out, result = full_run
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == multi_label.PROBLEM_TYPE
    thresholds = config[multi_label.THRESHOLDS_KEY]
    assert sorted(thresholds) == found.classes and all(0 < t < 1 for t in thresholds.values())
    results = json.loads((out / "eval_results.json").read_text())
    assert all(0 <= results[k] <= 1 for k in EXPECTED_METRICS)
    assert "eval_accuracy" not in results
    assert results["eval_map"] > 0.5  # four colours a 2-layer ViT can see; chance is about the labels' share
    report = json.loads((out / "eval_report.json").read_text())
    assert {row["threshold"] for row in report["per_class"].values()} == set(thresholds.values())
    assert (out / "per_class_ap.png").is_file() and (out / "worst_images.png").is_file()
    assert not (out / "confusion_matrix.png").exists()
    data_report = json.loads((out / "data_report.json").read_text())
    assert data_report["task"] == "multi_label"
    card = (out / "README.md").read_text()
    assert "multi-label" in card.lower() and "mAP" in card
    assert "multi-label" in result.stderr.lower() or "multi_label" in result.stderr.lower()


def test_the_pipeline_applies_a_sigmoid_and_predict_lists_every_label_above_its_threshold(full_run, capsys):
    from transformers import pipeline

    found, out, _ = full_run
    files = found.images["test"][:6]
    scores = pipeline("image-classification", model=str(out), top_k=None)(files)
    sums = [sum(s["score"] for s in row) for row in scores]
    assert any(abs(total - 1) > 1e-3 for total in sums)  # independent sigmoids, not a softmax
    thresholds = json.loads((out / "config.json").read_text())[multi_label.THRESHOLDS_KEY]
    assert main(["predict", str(out), *files, "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for row, piped in zip(rows, scores):
        expected = {s["label"] for s in piped if s["score"] >= thresholds[s["label"]]}
        assert {p["label"] for p in row["predictions"]} == expected
    assert main(["predict", str(out), *files, "--format", "jsonl", "--min-probability", "0.01"]) == 0
    loose = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(len(r["predictions"]) for r in loose) >= sum(len(r["predictions"]) for r in rows)


def test_finetune_eval_scores_the_saved_run_at_its_thresholds(full_run, tmp_path):
    found, out, _ = full_run
    report_dir = tmp_path / "report"
    assert main(["eval", str(out), "--data", found.dataset, "--split", "test", "--report-dir", str(report_dir)]) == 0
    scored = json.loads((report_dir / "eval_report.json").read_text())
    trained = json.loads((out / "eval_report.json").read_text())
    assert scored["num_images"] == trained["num_images"] == 24
    assert scored["map"] == pytest.approx(trained["map"], abs=1e-6)


@pytest.mark.parametrize("strategy, kind, model", [
    ("linear_probe", "jsonl", {"probe_solver": "lbfgs", "probe_l2": [1e-3, 1e-1]}),
    ("lp_ft", "parquet", {"probe_solver": "lbfgs", "probe_l2": [1e-3]}),
    ("lora", "csv", {}),
    ("partial", "csv", {"unfreeze_last_n": 1}),
])
def test_every_strategy_trains_a_multi_label_model(tmp_path, tiny_vit, strategy, kind, model):
    found = write_multi_label_set(tmp_path / "set", kind=kind, n_train=48, n_test=16)
    out = tmp_path / strategy
    training = {"num_train_epochs": 2} if strategy != "linear_probe" else {}
    recipe = _recipe(tmp_path, tiny_vit, found.dataset, out, strategy, model=model, training=training,
                     data={"task": "multi_label"} if kind == "csv" else {})
    assert main(["train", "--recipe", str(recipe)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == multi_label.PROBLEM_TYPE and config[multi_label.THRESHOLDS_KEY]
    results = json.loads((out / "eval_results.json").read_text())
    assert all(k in results for k in EXPECTED_METRICS), sorted(results)
    if strategy in ("linear_probe", "lp_ft"):
        train = json.loads((out / "train_results.json").read_text())
        assert train["probe_regression" if strategy == "linear_probe" else "lp_regression"] == "one-vs-rest"


def test_distillation_from_a_multi_label_teacher(full_run, tmp_path, tiny_vit):
    found, teacher, _ = full_run
    out = tmp_path / "student"
    recipe = _recipe(tmp_path, tiny_vit, found.dataset, out, model={"teacher": str(teacher)}, training={"num_train_epochs": 1})
    assert main(["train", "--recipe", str(recipe)]) == 0
    assert json.loads((out / "config.json").read_text())["problem_type"] == multi_label.PROBLEM_TYPE


def test_a_single_label_teacher_for_multi_label_data_is_refused_before_training(tmp_path, tiny_vit, capsys):
    found = write_multi_label_set(tmp_path / "set", kind="csv", n_train=16, n_test=8)
    out = tmp_path / "student"
    recipe = _recipe(tmp_path, tiny_vit, found.dataset, out, model={"teacher": str(tiny_vit)})
    assert main(["train", "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "model.teacher" in err and not (out / "model.safetensors").exists()


def test_thresholds_do_not_depend_on_the_eval_split(tmp_path, tiny_vit):
    """The same run with the test split's labels scrambled: the same thresholds (tuned on the validation piece)."""
    found = write_multi_label_set(tmp_path / "set", kind="csv", n_train=32, n_test=12)
    test_csv = Path(found.dataset) / "test.csv"
    lines = test_csv.read_text().splitlines()
    rng = np.random.default_rng(0)
    flipped = [lines[0]] + [f"{line.split(',')[0]},{';'.join(sorted(rng.choice(found.classes, 2, replace=False)))}"
                            for line in lines[1:]]
    thresholds = []
    for name, text in (("plain", None), ("scrambled", "\n".join(flipped) + "\n")):
        if text is not None:
            test_csv.write_text(text)
        out = tmp_path / name
        assert main(["train", "--recipe", str(_recipe(tmp_path, tiny_vit, found.dataset, out, training={"num_train_epochs": 1}))]) == 0
        thresholds.append(json.loads((out / "config.json").read_text())[multi_label.THRESHOLDS_KEY])
    assert thresholds[0] == thresholds[1]
