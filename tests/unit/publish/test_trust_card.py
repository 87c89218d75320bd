"""The card's sentences on how far to trust its numbers: the interval column and sentence, calibration before and after, and the abstention threshold in each of its cases."""

from __future__ import annotations

from pathlib import Path

from finetune.publish import card, trust_card
from finetune.recipe import recipe_from_dict

VALUES = {
    "eval_accuracy": 0.764, "eval_accuracy_ci_low": 0.737, "eval_accuracy_ci_high": 0.79,
    "eval_f1": 0.75, "eval_f1_ci_low": 0.72, "eval_f1_ci_high": 0.78,
    "eval_ci_level": 0.95, "eval_ci_resamples": 1000, "eval_num_images": 1000,
    "eval_ece": 0.031, "eval_ece_uncalibrated": 0.112,
    "eval_abstain_target_accuracy": 0.95, "eval_abstain_threshold": 0.8731, "eval_abstain_share": 0.412,
    "eval_abstain_kept_accuracy": 0.9523,
}
CALIBRATED = {"temperature": 1.8342, "validation_images": 222, "ece_bins": 15, "fitted_on": "the validation piece"}


def test_the_interval_sentence_says_which_spread_it_is() -> None:
    words = trust_card.context(VALUES, CALIBRATED, ["accuracy", "f1"], "test", False, True)
    assert words["ci_header"] == "95% CI"
    assert words["ci_note"].startswith("Accuracy 0.7640 (95% CI 0.7370–0.7900, 1,000 test images).")
    assert "1,000 resamples" in words["ci_note"] and "another training run" in words["ci_note"]
    assert trust_card.interval(VALUES, "f1") == "0.7200–0.7800" and trust_card.interval(VALUES, "recall") == ""


def test_calibration_before_and_after_or_why_not() -> None:
    text = trust_card.context(VALUES, CALIBRATED, ["accuracy"], "test", False, True)["calibration_text"]
    assert "T = 1.8342" in text and "222 images of the validation piece" in text
    assert "**0.1120 before, 0.0310 after**" in text and "optimistic" not in text
    on_validation = trust_card.context(VALUES, CALIBRATED, ["accuracy"], "validation piece", True, True)
    assert "optimistic" in on_validation["calibration_text"]
    off = {"temperature": None, "not_calibrated": "evaluation.calibrate is false", "ece_bins": 15}
    plain = {k: v for k, v in VALUES.items() if k != "eval_ece_uncalibrated"}
    text = trust_card.context(plain, off, ["accuracy"], "test", False, True)["calibration_text"]
    assert text.startswith("The probabilities are not temperature-scaled: evaluation.calibrate is false.")
    assert "**0.0310**" in text


def test_the_abstention_threshold_in_each_case() -> None:
    text = trust_card.context(VALUES, CALIBRATED, ["accuracy"], "test", False, True)["abstention_text"]
    assert "below **0.8731**" in text and "--min-probability 0.8731" in text
    assert "abstains on 41.2% of the images" in text and "95.2% right" in text and "calibrated probabilities" in text
    none_needed = VALUES | {"eval_abstain_threshold": 0.0, "eval_abstain_share": 0.0}
    assert "need not abstain" in trust_card.context(none_needed, CALIBRATED, ["accuracy"], "test", False, True)["abstention_text"]
    unreachable = {k: v for k, v in VALUES.items() if not k.startswith("eval_abstain_") or k == "eval_abstain_target_accuracy"}
    assert "No threshold" in trust_card.context(unreachable, CALIBRATED, ["accuracy"], "test", False, True)["abstention_text"]


def test_the_rendered_card(tmp_path: Path) -> None:
    recipe = recipe_from_dict({
        "description": "d", "model": {"name_or_path": "some/model"}, "data": {"dataset": "some/data"},
        "output_dir": str(tmp_path), "metrics": ["accuracy", "f1"],
    })
    (tmp_path / "reliability.png").write_bytes(b"")
    facts = card.CardFacts(
        eval_metrics=VALUES, train_metrics={}, eval_name="test", class_names=["a", "b"], num_train=10,
        num_validation=2, calibration=CALIBRATED,
    )
    text = card.write_card(tmp_path, recipe, facts).read_text()
    assert "| metric | value | 95% CI |" in text
    assert "| Accuracy | 0.7640 | 0.7370–0.7900 |" in text and "| F1 (macro) | 0.7500 | 0.7200–0.7800 |" in text
    assert "### Calibration" in text and "![Reliability diagram](reliability.png)" in text
    assert "### Abstaining when unsure" in text
    # A run from before these numbers existed still renders, without them.
    old = {k: v for k, v in VALUES.items() if k in ("eval_accuracy", "eval_f1", "eval_num_images")}
    text = card.write_card(tmp_path, recipe, card.CardFacts(old, {}, "test", ["a", "b"], 10, 2)).read_text()
    assert "| metric | value |\n|---|---|\n| Accuracy | 0.7640 |" in text and "### Calibration" not in text
