"""finish.py on a multi-label run (a tiny ViT made multi-label by hand, multi-hot rows made here): thresholds tuned on the validation piece and saved in config.json before the final evaluation, which is scored at them; the eval split never moves them; report, pictures, card and the push check agree."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from accelerate import PartialState
from scipy.special import expit

from finetune import data
from finetune.data import multi_label
from finetune.evaluation import thresholds
from finetune.evaluation.metrics import MetricAccumulator
from finetune.evaluation.tta import SIGMOID, TestTimeAugmentation
from finetune.publish import hub
from finetune.recipe import recipe_from_dict
from finetune.training import calibrate, finish, finish_multi_label
from tests.helpers import multi_label_eval as ml

NAMES = ["cat", "dog", "猫"]



class _Untouchable(list):
    """An eval split that fails the test if thresholds are tuned on it."""

    armed = False

    def __getitem__(self, index):
        assert not self.armed, "the eval split was read while tuning thresholds"
        return super().__getitem__(index)


def _run(tiny_vit, tmp_path: Path, eval_seed: int = 2, calibrate_setting=False, tta: str = "none", validation=True):
    model, processor = ml.multi_label_model(tiny_vit)
    out = tmp_path / "run"
    out.mkdir(parents=True, exist_ok=True)
    recipe = recipe_from_dict({
        "description": "multi-label test", "model": {"name_or_path": str(tiny_vit)},
        "data": {"dataset": "local-set", "eval_split": "test"}, "output_dir": str(out),
        "evaluation": {"calibrate": calibrate_setting, "tta": tta, "bootstrap_resamples": 100},
    })
    # What train.py writes first: the recipe as given (its metrics the single-label default).
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    accumulator = MetricAccumulator(recipe.metrics, len(NAMES), multi_label=True)
    trainer = ml.trainer(model, processor, out, accumulator)
    prepared = SimpleNamespace(
        splits=SimpleNamespace(class_names=NAMES, eval_name="test"),
        train=ml.rows(16, 3, 0), validation=ml.rows(24, 3, 1) if validation else None,
        eval=_Untouchable(ml.rows(20, 3, eval_seed)), eval_sets={}, data_report={},
    )
    run = SimpleNamespace(
        recipe=recipe, args=trainer.args, state=PartialState(), out=out, prepared=prepared,
        loaded=SimpleNamespace(model=model, trainable=10, total=20, lora=None),
        transform=data.BatchTransform.for_processor(processor, None), accumulator=accumulator, trainer=trainer,
        calibration=None, lp_record=None, search=None, done=[], main=True,
    )
    run.calibration = calibrate.plan(run, (32, 32))
    return run


def _finish(run):
    run.prepared.eval.armed = False
    return finish.finish(run, SimpleNamespace(metrics={"train_runtime": 0.5}))


def test_thresholds_are_tuned_on_the_validation_piece_and_saved_before_the_final_scores(tiny_vit, tmp_path) -> None:
    run = _run(tiny_vit, tmp_path)
    # What the validation piece gives, scored independently: the thresholds must be its F1-best ones.
    logits, targets = calibrate.predict_validation(run)
    expected = thresholds.tune(expit(logits.astype(np.float64)), targets).values
    final = _finish(run)
    config = json.loads((run.out / "config.json").read_text())
    assert config["problem_type"] == multi_label.PROBLEM_TYPE
    np.testing.assert_allclose(multi_label.thresholds(config, NAMES), expected)
    report = json.loads((run.out / "eval_report.json").read_text())
    assert [report["per_class"][n]["threshold"] for n in NAMES] == pytest.approx(list(expected))
    assert report["thresholds"]["source"] == "validation" and report["thresholds"]["validation_images"] == 24
    assert report["abstention"] == {"skipped": finish.trust.MULTI_LABEL_ABSTENTION}
    # The final evaluation is scored at the saved thresholds.
    predictions = run.accumulator.last
    np.testing.assert_allclose(predictions.thresholds, expected)
    results = json.loads((run.out / "eval_results.json").read_text())
    for name in ("map", "f1_micro", "f1_macro", "exact_match"):
        assert results[f"eval_{name}"] == pytest.approx(final[f"eval_{name}"])
        assert results[f"eval_{name}_ci_low"] <= results[f"eval_{name}"] <= results[f"eval_{name}_ci_high"]
    assert "eval_accuracy" not in results and not any(k.startswith("eval_abstain") for k in results)
    assert results["eval_num_images"] == 20
    pictures = {p.name for p in run.out.glob("*.png")}
    assert pictures == {"per_class_ap.png", "worst_images.png", "training_curves.png", "reliability.png"}
    # The card: multi-label, its thresholds, the sigmoid for pipeline users; its model-index
    # agrees with eval_results.json although recipe.json lists the single-label metrics.
    card = (run.out / "README.md").read_text()
    assert "multi-label classifier" in card and "tuned on the 24 images of the validation piece" in card
    assert "label_thresholds" in card and "sigmoid" in card and "per_class_ap.png" in card
    assert "| class | AP | precision | recall | F1 | support | threshold |" in card
    assert "mean_average_precision" in card and "gets no abstention threshold" in card
    assert hub.check_card(run.out) == 4
    assert run.done == ["model", "final evaluation", "report and card"]
    from finetune.training.run_files import recorded

    manifest = set(recorded(run.out))
    assert {"per_class_ap.png", "worst_images.png", "config.json", "eval_report.json"} <= manifest
    assert not {"confusion_matrix.png", "misclassified.png"} & manifest


def test_the_eval_splits_labels_do_not_move_the_thresholds(tiny_vit, tmp_path) -> None:
    saved = []
    for seed in (2, 3):
        run = _run(tiny_vit, tmp_path / f"eval-{seed}", eval_seed=seed)
        run.prepared.eval.armed = True  # tuning must not read it
        fit = finish_multi_label.tune(run, None)
        saved.append(fit.values)
        assert multi_label.thresholds(run.loaded.model.config, NAMES).tolist() == fit.values.tolist()
        np.testing.assert_array_equal(run.accumulator.thresholds, fit.values)
    np.testing.assert_array_equal(saved[0], saved[1])


def test_without_a_validation_piece_every_class_is_at_the_default_and_the_card_says_so(tiny_vit, tmp_path) -> None:
    run = _run(tiny_vit, tmp_path, validation=False)
    _finish(run)
    config = json.loads((run.out / "config.json").read_text())
    assert config[multi_label.THRESHOLDS_KEY] == {n: 0.5 for n in NAMES}
    card = (run.out / "README.md").read_text()
    assert "Every class uses the fixed threshold 0.5" in card and "no validation piece" in card


def test_with_a_temperature_and_views_the_thresholds_read_the_saved_models_probabilities(tiny_vit, tmp_path) -> None:
    run = _run(tiny_vit, tmp_path, calibrate_setting=None, tta="hflip")
    tta = finish.final_views(run)
    assert tta.activation.name == "sigmoid"
    fitted = calibrate.fit(run)
    t = fitted.temperature
    assert t is not None
    # Independently: each view's logits / T, sigmoid, averaged; the tuned thresholds are those of that average.
    per_view = []
    for one in TestTimeAugmentation("hflip", SIGMOID).each_view():
        run.trainer.tta = one
        per_view.append(calibrate.predict_validation(run))
    run.trainer.tta = tta
    probs = np.mean([expit(z.astype(np.float64) / t) for z, _ in per_view], axis=0)
    expected = thresholds.tune(probs, per_view[0][1]).values
    fit = finish_multi_label.tune(run, t)
    np.testing.assert_allclose(fit.values, expected, atol=1e-5)
    record = calibrate.record(run.calibration, fitted, "test", {}, "hflip", True)
    assert record["ece_kind"].startswith("binary") and "binary cross-entropy" in record["fitted_by"]
