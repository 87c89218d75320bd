"""card.py and hub.py's card check on a multi-label run: the card's model-index holds the metrics the run computed (not the recipe's default list) and equals eval_results.json, eval sets included; the card says how the thresholds were chosen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.publish import card, hub
from finetune.recipe import recipe_from_dict
from finetune.recipe.metric_names import MULTI_LABEL_METRICS

NAMES = ["cat", "dog", "bird"]
SCORES = {"map": 0.81, "f1_micro": 0.72, "f1_macro": 0.69, "exact_match": 0.41}


def _values(prefix: str, shift: float = 0.0) -> dict:
    out = {f"{prefix}_{k}": v - shift for k, v in SCORES.items()}
    out |= {f"{prefix}_{k}_ci_low": v - shift - 0.05 for k, v in SCORES.items()}
    out |= {f"{prefix}_{k}_ci_high": v - shift + 0.05 for k, v in SCORES.items()}
    return out | {f"{prefix}_ci_level": 0.95, f"{prefix}_ci_resamples": 1000, f"{prefix}_num_images": 50,
                  f"{prefix}_ece": 0.04, f"{prefix}_loss": 0.3}


def _report() -> dict:
    return {"per_class": {n: {"ap": 0.8, "precision": 0.7, "recall": 0.6, "f1": 0.65, "support": 5, "threshold": t}
                          for n, t in zip(NAMES, (0.31, 0.5, 0.62))}, "absent_classes": []}


def _thresholds(source: str = "validation") -> dict:
    return {"source": source, "validation_images": 40, "default": 0.5, "untuned_classes": ["dog"] if source == "validation" else NAMES,
            "rule": "the F1-maximising cut" if source == "validation" else "every class at 0.5: there is no validation piece",
            "values": dict(zip(NAMES, (0.31, 0.5, 0.62)))}


def _run(tmp_path: Path, eval_sets: bool, thresholds: dict | None = None) -> Path:
    raw = {"description": "d", "model": {"name_or_path": "some/model"}, "data": {"dataset": "some/data", "eval_split": "test"},
           "output_dir": str(tmp_path)}
    if eval_sets:
        raw["data"]["eval_sets"] = {"other": {"dataset": "other/data", "split": "test"}}
    recipe = recipe_from_dict(raw)
    assert "map" not in recipe.metrics  # the recipe as saved lists the single-label default
    results = _values("eval") | (_values("other", 0.1) if eval_sets else {})
    (tmp_path / "eval_results.json").write_text(json.dumps(results))
    (tmp_path / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    facts = card.CardFacts(
        eval_metrics=_values("eval"), train_metrics={}, eval_name="test", class_names=NAMES, num_train=100,
        num_validation=40, report=_report(), eval_set_metrics=_values("other", 0.1) if eval_sets else {},
        eval_set_reports={"other": {"absent_classes": []}} if eval_sets else {},
        metrics=list(MULTI_LABEL_METRICS), thresholds=thresholds or _thresholds(),
    )
    card.write_card(tmp_path, recipe, facts)
    return tmp_path


@pytest.mark.parametrize("eval_sets", [False, True], ids=["eval-split", "with-an-eval-set"])
def test_the_model_index_holds_the_runs_metrics_and_equals_eval_results(tmp_path, eval_sets) -> None:
    out = _run(tmp_path, eval_sets)
    from huggingface_hub import ModelCard

    results = ModelCard.load(out / "README.md").data.eval_results
    found = {(r.dataset_name, r.metric_type): r.metric_value for r in results}
    assert found[("some/data", "mean_average_precision")] == 0.81 and found[("some/data", "exact_match")] == 0.41
    if eval_sets:
        assert found[("other", "mean_average_precision")] == pytest.approx(0.71)
    assert hub.check_card(out) == (8 if eval_sets else 4)


def test_a_card_that_disagrees_with_eval_results_is_refused(tmp_path) -> None:
    out = _run(tmp_path, True)
    results = json.loads((out / "eval_results.json").read_text())
    results["other_map"] = 0.5  # an eval set's number, changed: checked against its own row
    (out / "eval_results.json").write_text(json.dumps(results))
    with pytest.raises(hub.PushError, match="differ from eval_results.json"):
        hub.check_card(out)


def test_the_card_says_what_a_multi_label_model_does_and_how_its_thresholds_were_chosen(tmp_path) -> None:
    text = (_run(tmp_path, False) / "README.md").read_text()
    assert "It is a multi-label classifier" in text and "It labels an image as one of" not in text
    assert "| mAP (macro) | 0.8100 | 0.7600–0.8600 |" in text
    assert "tuned on the 40 images of the validation piece (never the eval split)" in text
    assert "1 class(es) had no positive image in the validation piece and keep the default 0.5: `dog`" in text
    assert "| cat | 0.800 | 0.700 | 0.600 | 0.650 | 5 | 0.310 |" in text
    assert "top_k=3" in text and "config.label_thresholds" in text
    assert "ECE: 15 equal-width bins of each class's probability" in text
    assert "may still get some of them" in text


def test_without_a_validation_piece_the_card_says_the_thresholds_are_fixed(tmp_path) -> None:
    text = (_run(tmp_path, False, _thresholds("default")) / "README.md").read_text()
    assert "Every class uses the fixed threshold 0.5: the thresholds were not tuned" in text
    assert "there is no validation piece" in text
