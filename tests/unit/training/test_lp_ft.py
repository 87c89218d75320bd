"""lp_ft.py: LP-FT's recipe checks, its probed head kept or removed with the output folder, and a
model whose logits are not its last Linear's refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.recipe import RecipeError, recipe_from_dict
from finetune.training import lp_ft
from finetune.training.output_dir import LP_HEAD
from tests.helpers.models import doubled_head


def _raw(**model) -> dict:
    return {"description": "d", "model": {"name_or_path": "m", **model}, "data": {"dataset": "d"}, "output_dir": "o"}


@pytest.mark.parametrize(
    "model, message",
    [
        ({"strategy": "lp_ft", "feature_cache": False}, "'model.strategy' 'lp_ft' fits its linear probe on cached features"),
        ({"strategy": "lp_ft", "lp_epochs": 0}, "'model.lp_epochs' must be > 0"),
        ({"strategy": "full", "probe_solver": "lbfgs"}, "'model.probe_solver' 'lbfgs' fits the head on cached features"),
    ],
)
def test_bad_lp_ft_recipes_fail_up_front(model: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(_raw(**model))


def test_lp_ft_takes_the_lbfgs_probe_and_its_l2_choice_needs_a_separate_eval_split() -> None:
    assert recipe_from_dict(_raw(strategy="lp_ft", probe_solver="lbfgs")).model.strategy == "lp_ft"
    raw = _raw(strategy="lp_ft", probe_solver="lbfgs") | {"data": {"dataset": "d", "eval_split": None}}
    with pytest.raises(RecipeError, match="the reported split must not pick them"):
        recipe_from_dict(raw)


def test_overwrite_removes_the_probed_head_and_the_same_recipe_keeps_it(tmp_path: Path) -> None:
    from finetune.training.output_dir import claim_output_dir
    from finetune.utils.files import write_json

    def recipe(lr: float):
        return recipe_from_dict(_raw(strategy="lp_ft") | {"output_dir": str(tmp_path / "run"), "training": {"learning_rate": lr}})

    out = tmp_path / "run"
    out.mkdir()
    write_json(out / "recipe.json", recipe(0.1).to_dict())
    (out / LP_HEAD).write_bytes(b"a head")
    lock, resume = claim_output_dir(recipe(0.1), overwrite=False)  # the same recipe: a rerun reuses it
    lock.release()
    assert resume is None and (out / LP_HEAD).is_file()
    lock, _ = claim_output_dir(recipe(0.2), overwrite=True)
    lock.release()
    assert not (out / LP_HEAD).exists()


def test_a_model_with_work_after_its_head_is_refused_with_lp_fts_own_fix(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from finetune import data
    from finetune.models.classifier import ModelError

    rows = [{"pixel_values": torch.zeros(3, 4, 4, dtype=torch.uint8), "labels": torch.tensor(0)}] * 2
    prepared = SimpleNamespace(train=rows, validation=None, splits=SimpleNamespace(class_names=["a", "b"], multi_label=False))
    state = SimpleNamespace(is_main_process=True, num_processes=1, wait_for_everyone=lambda: None)
    recipe = recipe_from_dict(
        _raw(strategy="lp_ft", probe_solver="lbfgs", probe_l2=[0.01])
        | {"output_dir": str(tmp_path), "training": {"use_cpu": True}, "data": {"dataset": "d", "validation_fraction": 0}}
    )
    transform = data.BatchTransform([0.5] * 3, [0.5] * 3, (4, 4), None)
    with pytest.raises(ModelError) as refused:
        lp_ft.probe_phase(recipe, SimpleNamespace(model=doubled_head()), transform, prepared, tmp_path, state)
    assert str(refused.value).startswith("model.strategy 'lp_ft': this model's logits are not the output of its last Linear")
    assert str(refused.value).endswith("use strategy 'full'") and "feature_cache" not in str(refused.value)
    assert not (tmp_path / LP_HEAD).exists()


def test_the_probe_phase_of_a_multi_label_model_is_one_vs_rest_chosen_by_map(tiny_vit: Path, tmp_path: Path) -> None:
    """LP-FT's L-BFGS probe on multi-hot features: one-vs-rest, λ by validation mAP, said so in
    the record, train_results.json and the card; a rerun reuses the head."""
    from types import SimpleNamespace

    import numpy as np
    from accelerate import PartialState

    from finetune.data.multi_label import PROBLEM_TYPE
    from finetune.probe.features import FeatureDataset
    from tests.helpers.features import NAMES, batch_transform, load_probe_model

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(90, 32)).astype(np.float32))
    y = torch.stack([x[:, 0] > 0, x[:, 1] > 0.5, x[:, 2] + x[:, 3] > 0], dim=1).float()
    loaded, processor = load_probe_model(tiny_vit, "lp_ft")
    loaded.model.config.problem_type = PROBLEM_TYPE
    prepared = SimpleNamespace(train=FeatureDataset(x[:60], y[:60]), validation=FeatureDataset(x[60:], y[60:]),
                               splits=SimpleNamespace(class_names=NAMES, multi_label=True))
    recipe = recipe_from_dict(_raw(name_or_path=str(tiny_vit), strategy="lp_ft", probe_solver="lbfgs", probe_l2=[1.0, 0.01])
                              | {"output_dir": str(tmp_path / "run"), "training": {"use_cpu": True, "report_to": []}})
    out = tmp_path / "run"
    out.mkdir()
    record = lp_ft.probe_phase(recipe, loaded, batch_transform(processor), prepared, out, PartialState())
    assert record["multi_label"] and not record["reused"]
    assert 0.5 < record["metrics"]["validation_map"] <= 1 and "validation_accuracy" not in record["metrics"]
    assert lp_ft.train_metrics(record)["lp_validation_map"] == record["metrics"]["validation_map"]
    lines = lp_ft.card_lines(record)
    assert "L-BFGS one-vs-rest logistic regression" in lines[0]
    assert any(line.startswith("validation-piece mAP of the probe alone: ") for line in lines)
    head = loaded.model.classifier
    weight = head.weight.detach().clone()
    with torch.no_grad():
        head.weight.zero_()
    again = lp_ft.probe_phase(recipe, loaded, batch_transform(processor), prepared, out, PartialState())
    assert again["reused"] and again["multi_label"] and torch.equal(head.weight, weight)
