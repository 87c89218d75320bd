"""Stochastic depth: the rate reaches the DropPath layers that timm and transformers build, the
saved model keeps it, and a model without it is refused, naming its type, before the data pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune.models import drop_path
from finetune.models.classifier import load_config, load_model, load_processor
from finetune.recipe import ModelConfig, RecipeError, recipe_from_dict
from tests.helpers.models import save_tiny


def _loaded(path: Path, rate: float | None, classes: int = 3):
    cfg = ModelConfig(name_or_path=str(path), drop_path_rate=rate)
    return load_model(cfg, [f"c{i}" for i in range(classes)], load_processor(cfg, None)).model


def test_a_timm_model_gets_the_rate_as_timm_builds_it(tiny_timm: Path) -> None:
    import timm

    model = _loaded(tiny_timm, 0.3)
    reference = timm.create_model("test_efficientnet", pretrained=False, num_classes=3, drop_path_rate=0.3)
    rates = drop_path.drop_rates(model)
    assert rates == pytest.approx(drop_path.drop_rates(reference))
    assert max(rates) > 0.1, rates  # the rate rises with depth towards 0.3
    assert not any(drop_path.drop_rates(_loaded(tiny_timm, None)))  # null: the checkpoint's own (none)


def test_a_transformers_convnext_gets_the_rate_in_its_config(tmp_path: Path) -> None:
    path = save_tiny("convnext", tmp_path / "convnext")
    model = _loaded(path, 0.2)
    assert model.config.drop_path_rate == 0.2
    rates = drop_path.drop_rates(model)
    # Two blocks: transformers spaces the rates linearly from 0 to 0.2, and a block at 0 gets
    # no DropPath layer at all.
    assert rates == pytest.approx([0.2])
    assert "stochastic depth in 1 DropPath layer(s), drop rates 0.2 to 0.2" in drop_path.describe(model, 0.2)


def test_in_training_mode_a_drop_path_layer_drops_whole_images(tmp_path: Path) -> None:
    """The built layers really drop (per image, scaled by 1/(1−p)) in training, and pass
    everything through in eval mode."""
    model = _loaded(save_tiny("convnext", tmp_path / "convnext"), 0.5)
    layer = next(m for m in model.modules() if getattr(m, "drop_prob", 0) == 0.5)
    x = torch.ones(64, 4, 2, 2)
    layer.train()
    torch.manual_seed(0)
    out = layer(x)
    kept = out.flatten(1).amax(1)
    assert set(kept.tolist()) <= {0.0, 2.0} and 0 < (kept == 0).sum() < 64
    layer.eval()
    assert torch.equal(layer(x), x)


def test_the_saved_model_keeps_the_rate_and_rebuilds_the_same(tiny_timm: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageClassification

    model = _loaded(tiny_timm, 0.25)
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_args"] == {"drop_path_rate": 0.25}
    again = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert drop_path.drop_rates(again) == pytest.approx(drop_path.drop_rates(model))


def test_a_model_without_stochastic_depth_is_refused_naming_its_type(tiny_vit: Path, tiny_resnet: Path) -> None:
    for path, kind in ((tiny_vit, "vit"), (tiny_resnet, "resnet")):
        config = load_config(ModelConfig(name_or_path=str(path)))
        with pytest.raises(drop_path.DropPathError, match=rf"^model.drop_path_rate: the {kind} model has no stochastic depth"):
            drop_path.check_supported(config, 0.1)
        with pytest.raises(drop_path.DropPathError):
            _loaded(path, 0.1)


def test_a_timm_architecture_is_checked_on_the_meta_device(tiny_timm: Path) -> None:
    config = load_config(ModelConfig(name_or_path=str(tiny_timm)))
    drop_path.check_supported(config, 0.1)  # test_efficientnet has DropPath layers
    config.architecture = "vgg11"  # timm's VGG takes no drop_path_rate
    with pytest.raises(drop_path.DropPathError, match="the timm vgg11 model has no stochastic depth"):
        drop_path.check_supported(config, 0.1)


def test_a_per_stage_rate_is_refused() -> None:
    from transformers import CvtConfig

    with pytest.raises(drop_path.DropPathError, match="the cvt model .* one value per stage"):
        drop_path.check_supported(CvtConfig(), 0.1)


def test_a_training_run_refuses_it_before_the_data_pass(tiny_vit: Path, tmp_path: Path, monkeypatch) -> None:
    from finetune.training import train as train_mod

    def no_data(*args, **kwargs):
        raise AssertionError("the data pass ran before the model was checked")

    monkeypatch.setattr(train_mod, "prepare_data", no_data)
    recipe = recipe_from_dict({
        "description": "d", "output_dir": str(tmp_path / "out"),
        "model": {"name_or_path": str(tiny_vit), "drop_path_rate": 0.1},
        "data": {"dataset": "builtin:digits"},
        "training": {"use_cpu": True},
    })
    with pytest.raises(drop_path.DropPathError, match="the vit model"):
        train_mod.train(recipe)


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ({"drop_path_rate": 1.0}, "'model.drop_path_rate' must be in [0, 1)"),
        ({"drop_path_rate": -0.1}, "'model.drop_path_rate' must be in [0, 1)"),
        ({"drop_path_rate": 0.1, "strategy": "linear_probe"}, "runs it once, in eval mode"),
    ],
)
def test_recipe_checks(model: dict, problem: str) -> None:
    raw = {"description": "d", "output_dir": "o", "model": {"name_or_path": "x/y", **model}, "data": {"dataset": "d"}}
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(raw)
    assert problem in str(err.value)
    # With the backbone running every step, the probe may use it.
    model = {**model, "drop_path_rate": 0.1}
    recipe_from_dict({**raw, "model": {"name_or_path": "x/y", **model, "feature_cache": False}})
