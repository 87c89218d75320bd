"""features.py: cached features reproduce the model's logits, the pass shows its progress, and a
model with work after its last Linear is refused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from finetune import data
from finetune.models import classifier as model_lib
from finetune.probe import features
from tests.helpers.features import batch_transform, decode_folder, load_probe_model
from tests.helpers.images import make_image_folder
from tests.helpers.models import doubled_head


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_resnet", "tiny_timm"])
def test_head_on_cached_features_reproduces_the_models_logits(fixture: str, request, tmp_path: Path) -> None:
    loaded, processor = load_probe_model(request.getfixturevalue(fixture))
    decoded = decode_folder(make_image_folder(tmp_path / "images", per_class=3, splits=("train",)), processor)
    transform = batch_transform(processor)
    cached = features.compute_features(loaded.model, decoded, transform, device="cpu", batch_size=4)
    _, head = features.find_head(loaded.model)
    assert len(cached) == len(decoded) and torch.equal(cached.labels, torch.as_tensor(decoded["labels"][:]))
    loaded.model.eval()
    with torch.inference_mode():
        for start in range(0, len(decoded), 4):
            pixels = transform(decoded[start : start + 4]["pixel_values"], train=False)
            logits = loaded.model(pixel_values=pixels).logits
            assert torch.equal(head(cached.features[start : start + 4]), logits)


@pytest.mark.parametrize("disable_tqdm", [False, True])
def test_feature_pass_shows_a_bar_in_images_unless_disable_tqdm(disable_tqdm: bool, tiny_resnet: Path, tmp_path: Path, capsys) -> None:
    loaded, processor = load_probe_model(tiny_resnet)
    decoded = decode_folder(make_image_folder(tmp_path / "images", per_class=3, splits=("train",)), processor)
    transform = batch_transform(processor)
    capsys.readouterr()
    args = SimpleNamespace(disable_tqdm=disable_tqdm, process_index=0, dataloader_num_workers=0)
    features.compute_features(loaded.model, decoded, transform, device="cpu", batch_size=4, args=args)
    err = capsys.readouterr().err
    if disable_tqdm:
        assert err == ""
    else:  # tqdm's last redraw: all 9 images, counted in images, with the rate
        assert "feature pass" in err and f"{len(decoded)}/{len(decoded)}" in err and "img/s" in err


def test_a_model_with_work_after_its_last_linear_is_refused() -> None:
    rows = [{"pixel_values": torch.zeros(3, 4, 4, dtype=torch.uint8), "labels": torch.tensor(0)}] * 2
    with pytest.raises(model_lib.ModelError, match="feature_cache to false"):
        features.compute_features(doubled_head(), rows, data.BatchTransform([0.5] * 3, [0.5] * 3, (4, 4), None), device="cpu")
