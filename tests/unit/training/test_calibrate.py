"""Calibration in a run: the decision before training (on, off with a reason, or refused), and the fit, which reads the validation piece and never the eval split."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import softmax

from finetune.recipe import recipe_from_dict
from finetune.training import calibrate
from tests.helpers.models import doubled_head


def _run(tmp_path: Path, model, calibrate_setting=None, validation=("val",), **args):
    recipe = recipe_from_dict({
        "description": "d", "model": {"name_or_path": "x"}, "data": {"dataset": "x"}, "output_dir": str(tmp_path),
        "evaluation": {"calibrate": calibrate_setting},
    })
    prepared = SimpleNamespace(validation=list(validation) if validation is not None else None, eval=None)
    return SimpleNamespace(recipe=recipe, args=SimpleNamespace(fsdp=args.get("fsdp"), deepspeed=None),
                           prepared=prepared, loaded=SimpleNamespace(model=model))


def _vit(path):
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(path)


def test_on_by_default_where_it_can_work(tiny_vit, tmp_path) -> None:
    plan = calibrate.plan(_run(tmp_path, _vit(tiny_vit)), (32, 32))
    assert plan.on and plan.head == "classifier" and plan.reason is None
    assert calibrate.plan(_run(tmp_path, _vit(tiny_vit), True), (32, 32)).on


def test_off_when_asked_or_without_a_validation_piece(tiny_vit, tmp_path) -> None:
    plan = calibrate.plan(_run(tmp_path, _vit(tiny_vit), False), (32, 32))
    assert not plan.on and "false" in plan.reason
    plan = calibrate.plan(_run(tmp_path, _vit(tiny_vit), validation=None), (32, 32))
    assert not plan.on and "no validation piece" in plan.reason


def test_a_head_that_is_not_whole_is_skipped_by_default_and_refused_when_asked(tmp_path, caplog) -> None:
    with caplog.at_level("INFO", logger="finetune"):
        plan = calibrate.plan(_run(tmp_path, doubled_head()), (8, 8))
    assert not plan.on and "is not the whole head" in plan.reason
    assert any("calibration: off:" in r.getMessage() for r in caplog.records)
    with pytest.raises(calibrate.CalibrationError) as err:
        calibrate.plan(_run(tmp_path, doubled_head(), True), (8, 8))
    message = str(err.value)
    assert "\n" not in message and message.startswith("evaluation.calibrate: true, but its last Linear layer (classifier)")
    assert "set evaluation.calibrate to null" in message


def test_sharded_weights_cannot_be_folded(tiny_vit, tmp_path) -> None:
    plan = calibrate.plan(_run(tmp_path, _vit(tiny_vit), fsdp="full_shard"), (32, 32))
    assert not plan.on and "FSDP" in plan.reason
    with pytest.raises(calibrate.CalibrationError):
        calibrate.plan(_run(tmp_path, _vit(tiny_vit), True, fsdp="full_shard"), (32, 32))


class _EvalSplit:
    """An eval split that fails the test if anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the eval split was read ({name})")

    def __len__(self):
        raise AssertionError("the eval split was read (len)")

    def __getitem__(self, index):
        raise AssertionError("the eval split was read (getitem)")


def test_the_fit_reads_the_validation_piece_and_never_the_eval_split(tmp_path) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (600, 4))
    labels = np.array([rng.choice(4, p=row) for row in softmax(z, axis=1)])
    validation = object()
    seen = []

    def predict(dataset, metric_key_prefix="test"):
        seen.append(dataset)
        return SimpleNamespace(predictions=3 * z, label_ids=labels)

    run = SimpleNamespace(prepared=SimpleNamespace(validation=validation, eval=_EvalSplit()),
                          trainer=SimpleNamespace(predict=predict))
    fitted = calibrate.fit(run)
    assert seen == [validation]
    assert fitted.temperature == pytest.approx(3.0, rel=0.15) and fitted.num_images == 600
    record = calibrate.record(calibrate.Plan(True, None, "classifier"), fitted, "test", {"eval_ece": 0.02, "eval_ece_uncalibrated": 0.2})
    assert record["temperature"] == fitted.temperature and record["fitted_on"] == "the validation piece"
    assert record["ece"] == 0.02 and record["ece_uncalibrated"] == 0.2 and "not_calibrated" not in record
