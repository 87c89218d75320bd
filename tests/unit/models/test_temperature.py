"""A temperature folded into the head: the logits become logits / T, the weights come back bit for bit, and heads that are not the whole head are recognised."""

from __future__ import annotations

import pytest
import torch

from finetune.models import temperature
from finetune.probe.features import find_head
from tests.helpers.models import doubled_head


def _load(path):
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(path).eval()


def test_folding_divides_the_logits_and_the_weights_come_back(tiny_vit) -> None:
    model = _load(tiny_vit)
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
    _, head = find_head(model)
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    with temperature.folded(head, 2.5):
        with torch.no_grad():
            scaled = model(pixel_values=pixels).logits
        assert not torch.equal(head.weight, weight)
    torch.testing.assert_close(scaled, before / 2.5, rtol=1e-5, atol=1e-6)
    assert torch.equal(head.weight, weight) and torch.equal(head.bias, bias)
    with temperature.folded(head, None):  # nothing to fold
        assert torch.equal(head.weight, weight)


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_resnet", "tiny_timm"])
def test_the_supported_families_have_a_whole_linear_head(fixture, request) -> None:
    model = _load(request.getfixturevalue(fixture))
    _, head = find_head(model)
    mode = model.training
    assert temperature.output_is_logits(model, head, (32, 32))
    assert model.training == mode


def test_a_head_followed_by_more_is_not_whole(tmp_path) -> None:
    model = doubled_head()
    assert not temperature.output_is_logits(model, model.classifier, (8, 8))
    # DeiT with a distillation token averages two Linear heads: the last one alone is not the logits.
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    deit = DeiTForImageClassificationWithTeacher(DeiTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3,
    ))
    _, head = find_head(deit)
    assert not temperature.output_is_logits(deit, head, (32, 32))
