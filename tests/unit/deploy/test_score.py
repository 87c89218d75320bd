"""score.py: `finetune eval` through the Trainer's evaluation, on a run trained through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from finetune.cli.main import main
from finetune.deploy import score as evaluation
from finetune.training.run_files import MANIFEST, recorded
from tests.helpers.images import CLASSES, class_image
from tests.helpers.runs import file_hashes, trained_run

PNGS = ("confusion_matrix.png", "misclassified.png", "training_curves.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


def test_eval_writes_report_into_new_folder(run, capsys):
    before = file_hashes(run.out)
    # batch size 8 as in training, so the logits (and the argmax) are bit-identical
    code = main(["eval", str(run.out), "--data", str(run.images), "--split", "test", "--batch-size", "8"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    target = run.out / "eval-images-test"
    assert str(target) in out and "accuracy" in out and "18 images" in out
    report = json.loads((target / "eval_report.json").read_text())
    trained = json.loads((run.out / "eval_results.json").read_text())
    assert report["num_images"] == 18 and report["split"] == "test"
    assert report["accuracy"] == pytest.approx(trained["eval_accuracy"], abs=1e-9)
    assert report["macro_f1"] == pytest.approx(trained["eval_f1"], abs=1e-9)
    # The same Trainer evaluation as training's final one: the same mean loss, too.
    assert report["loss"] == pytest.approx(trained["eval_loss"], rel=1e-6)
    assert sorted(report["per_class"]) == sorted(CLASSES)
    # The same predictions and the same seed: the run's own intervals and calibration error.
    intervals = report["confidence_intervals"]
    assert intervals["level"] == 0.95 and intervals["resamples"] == 1000
    assert intervals["accuracy"] == [trained["eval_accuracy_ci_low"], trained["eval_accuracy_ci_high"]]
    assert intervals["macro_f1"] == [trained["eval_f1_ci_low"], trained["eval_f1_ci_high"]]
    assert report["ece"] == pytest.approx(trained["eval_ece"], abs=1e-6)
    assert "95% CI" in out and "ECE" in out
    assert (target / "reliability.png").is_file()
    for name in PNGS:
        with Image.open(target / name) as image:
            assert image.format == "PNG"
    after = file_hashes(run.out)
    assert {k: v for k, v in after.items() if not k.startswith("eval-images-test/") and k != MANIFEST} == {
        k: v for k, v in before.items() if k != MANIFEST
    }
    assert "eval-images-test" in recorded(run.out)  # the run's now: --overwrite removes it with the run
    # Again into the folder that is there now: each file it writes (the reliability diagram too) is listed.
    shutil.rmtree(target)
    target.mkdir()
    assert main(["eval", str(run.out), "--data", str(run.images), "--split", "test", "--report-dir", str(target)]) == 0
    written = {f"eval-images-test/{p.name}" for p in target.iterdir()}
    assert "eval-images-test/reliability.png" in written and written <= recorded(run.out)
    shutil.rmtree(target)  # other tests (push) see the run as trained


def test_eval_unknown_class_is_one_line_error(run, tmp_path, capsys):
    import numpy as np

    data = tmp_path / "other"
    shutil.copytree(run.images / "test", data / "test")
    (data / "test" / "purple").mkdir()
    class_image("red", np.random.default_rng(0)).save(data / "test" / "purple" / "p.png")
    assert main(["eval", str(run.out), "--data", str(data), "--report-dir", str(tmp_path / "rep")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("finetune: error: ")
    assert "purple" in errors[0] and "does not know" in errors[0]
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "validation"], "is not a split of"),
        (["--image-column", "photo"], "--image-column: no column 'photo'"),
        (["--report-dir", "{out}"], "is the run's own folder"),
    ],
)
def test_eval_bad_options(run, capsys, args, message):
    args = [a.format(out=run.out) for a in args]
    assert main(["eval", str(run.out), "--data", str(run.images), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("finetune: error: ") and message in err[-1]


def test_default_report_dir_names():
    out = Path("/runs/x")
    assert evaluation.default_report_dir(out, "/data/flowers/", "test") == out / "eval-flowers-test"
    assert evaluation.default_report_dir(out, "user/some-set", "validation") == out / "eval-user--some-set-validation"
    assert evaluation.default_report_dir(out, "builtin:digits", "test") == out / "eval-builtin-digits-test"


def test_eval_with_tta_scores_the_averaged_views(run, capsys, tmp_path):
    """--tta: the report says which views, and the loss is the averaged prediction's (here the
    run recorded none, so the default is one view, the run's own numbers)."""
    reports = {}
    for mode in (None, "hflip", "hflip+crops"):
        target = tmp_path / str(mode)
        option = ["--tta", mode] if mode else []
        code = main(["eval", str(run.out), "--data", str(run.images), "--batch-size", "8", "--report-dir", str(target), *option])
        assert code == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert ("test-time augmentation" in out) == (mode is not None)
        reports[mode] = json.loads((target / "eval_report.json").read_text())
    trained = json.loads((run.out / "eval_results.json").read_text())
    assert reports[None]["tta"] == "none" and reports[None]["loss"] == pytest.approx(trained["eval_loss"], rel=1e-6)
    assert reports["hflip"]["tta"] == "hflip" and reports["hflip+crops"]["tta"] == "hflip+crops"
    losses = {mode: r["loss"] for mode, r in reports.items()}
    assert len({round(v, 6) for v in losses.values()}) == 3, losses
    assert all(r["num_images"] == 18 for r in reports.values())
