"""calibrate.py on a multi-label model: one T by binary cross-entropy on the validation piece's multi-hot rows (padding rows left out, the eval split never read), and the calibration record says so."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import expit

from finetune.data import multi_label
from finetune.evaluation import calibration
from finetune.training import calibrate
from tests.unit.training.test_calibrate import _EvalSplit


def test_the_fit_reads_the_validation_piece_leaves_padding_out_and_uses_bce() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (800, 3))
    targets = (rng.random(z.shape) < expit(z)).astype(np.float32)
    padded_logits = np.concatenate([3 * z, np.full((5, 3), 50.0)])
    padded_targets = np.concatenate([targets, np.full((5, 3), multi_label.IGNORE_VALUE, np.float32)])
    validation = object()
    seen = []

    def predict(dataset, metric_key_prefix="test"):
        seen.append(dataset)
        return SimpleNamespace(predictions=padded_logits, label_ids=padded_targets)

    run = SimpleNamespace(prepared=SimpleNamespace(validation=validation, eval=_EvalSplit()),
                          trainer=SimpleNamespace(predict=predict))
    fitted = calibrate.fit(run)
    assert seen == [validation] and fitted.num_images == 800
    assert fitted.temperature == pytest.approx(calibration.fit_binary_temperature(3 * z, targets).temperature)
    assert fitted.temperature == pytest.approx(3.0, rel=0.15)
    record = calibrate.record(calibrate.Plan(True, None, "classifier"), fitted, "test", {"eval_ece": 0.01}, "none", True)
    assert record["fitted_by"] == "binary cross-entropy of every class's sigmoid"
    assert record["ece_kind"] == "binary, over every (image, class) pair" and record["temperature"] == fitted.temperature
