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
    assert record["tta"] == "none"


def test_with_test_time_views_the_fit_reads_each_views_logits(tmp_path) -> None:
    """One prediction pass per view, each with that view alone, stacked N×V×C: T is fitted to
    the softmax averaged over the views; the trainer's views are put back afterwards."""
    from finetune.evaluation.tta import TestTimeAugmentation

    rng = np.random.default_rng(2)
    z = rng.normal(0, 1.5, (400, 3))
    labels = np.array([rng.choice(3, p=row) for row in softmax(z, axis=1)])
    per_view = {False: 3 * (z + rng.normal(0, 0.5, z.shape)), True: 3 * (z + rng.normal(0, 0.5, z.shape))}
    seen = []
    tta = TestTimeAugmentation("hflip")

    def predict(dataset, metric_key_prefix="test"):
        (view,) = trainer.tta.views
        seen.append(view.flip)
        return SimpleNamespace(predictions=per_view[view.flip], label_ids=labels)

    trainer = SimpleNamespace(predict=predict, tta=tta)
    run = SimpleNamespace(prepared=SimpleNamespace(validation=object(), eval=_EvalSplit()), trainer=trainer)
    logits, got = calibrate.view_logits(run)
    assert seen == [False, True] and logits.shape == (400, 2, 3) and trainer.tta is tta
    np.testing.assert_array_equal(got, labels)
    from finetune.evaluation import calibration

    stacked = np.stack([per_view[False], per_view[True]], axis=1)
    assert calibrate.fit(run).temperature == pytest.approx(calibration.fit_temperature(stacked, labels).temperature)
    assert calibrate.fit(run).temperature != pytest.approx(calibration.fit_temperature(per_view[False], labels).temperature)


def test_the_uncalibrated_average_over_views_comes_as_a_second_output() -> None:
    """MetricAccumulator with a temperature over views: the confidence before T is the second
    output's top probability, and its top class may differ from the calibrated one."""
    import torch

    from finetune.evaluation.metrics import MetricAccumulator

    accumulator = MetricAccumulator(["accuracy"], 3)
    accumulator.temperature, accumulator.uncalibrated_output = 2.0, True
    calibrated = torch.tensor([[2.0, 1.9, 0.0], [0.0, 3.0, 0.0]]).log_softmax(-1)
    before = torch.tensor([[1.0, 3.0, 0.0], [0.0, 5.0, 0.0]]).log_softmax(-1)
    accumulator(SimpleNamespace(predictions=(calibrated, before), label_ids=torch.tensor([1, 1])))
    p = accumulator.last
    assert p.preds.tolist() == [0, 1] and p.uncalibrated_correct.tolist() == [True, True]
    assert p.uncalibrated_confidence == pytest.approx(before.softmax(-1).max(-1).values.numpy())
    assert p.correct_before_calibration().tolist() == [True, True]
