"""The test-time views: which views each mode makes, that each keeps the batch's size and layout,
and that the view set is closed under mirroring (an averaged prediction ignores a mirrored input)."""

from __future__ import annotations

import pytest
import torch

from finetune.data import TestViews
from finetune.data.views import CROP_FRACTION, crop_size, views_of
from finetune.evaluation.tta import TestTimeAugmentation


def test_each_mode_makes_its_views_the_image_itself_first() -> None:
    assert [v.name for v in views_of("none")] == ["whole"]
    assert [v.name for v in views_of("hflip")] == ["whole", "whole, mirrored"]
    crops = views_of("hflip+crops")
    assert len(crops) == 10 and crops[0].name == "whole"
    assert {v.corner for v in crops} == {None, "top-left", "top-right", "bottom-left", "bottom-right"}
    assert sum(v.flip for v in crops) == 5
    with pytest.raises(ValueError, match="unknown test-time augmentation 'vflip'"):
        views_of("vflip")


def test_views_are_the_image_its_mirror_and_resized_corner_crops() -> None:
    from torchvision.transforms.v2 import functional as F

    torch.manual_seed(0)
    x = torch.randn(3, 3, 16, 24)
    views = TestViews("hflip+crops")
    by_name = {v.name: views.apply(x, v) for v in views}
    assert torch.equal(by_name["whole"], x)
    assert torch.equal(by_name["whole, mirrored"], x.flip(-1))
    h, w = crop_size(16, 24)
    assert (h, w) == (round(16 * CROP_FRACTION), round(24 * CROP_FRACTION)) == (14, 21)
    expected = F.resized_crop(x, 16 - h, 0, h, w, [16, 24], antialias=True)
    assert torch.equal(by_name["bottom-left"], expected)
    assert torch.equal(by_name["top-right, mirrored"], F.resized_crop(x, 0, 24 - w, h, w, [16, 24], antialias=True).flip(-1))
    for out in by_name.values():
        assert out.shape == x.shape


def test_channels_last_batches_stay_channels_last() -> None:
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    views = TestViews("hflip+crops")
    for view in views:
        assert views.apply(x, view).is_contiguous(memory_format=torch.channels_last), view.name


def _lopsided_model(seed: int = 0):
    """A random linear classifier of the pixels: its output on an image differs from its
    output on the mirror image."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(4, 3 * 16 * 16, generator=generator)
    return lambda pixels: pixels.flatten(1) @ weight.T


@pytest.mark.parametrize("mode", ["hflip", "hflip+crops"])
def test_the_averaged_prediction_ignores_a_mirrored_input(mode: str) -> None:
    torch.manual_seed(1)
    x = torch.randn(5, 3, 16, 16)
    model = _lopsided_model()
    tta = TestTimeAugmentation(mode)
    assert torch.allclose(tta.probabilities(model, x), tta.probabilities(model, x.flip(-1)), atol=1e-6)
    # One view does not: the test would notice a view set that lost its closure.
    plain = TestTimeAugmentation("none")
    assert not torch.allclose(plain.probabilities(model, x), plain.probabilities(model, x.flip(-1)), atol=1e-3)


def test_the_corner_views_map_onto_each_other_under_mirroring() -> None:
    """The mirror of the top-left crop is the top-right crop of the mirror image, and so on:
    the view set of a mirrored batch is the mirrored view set (to float rounding)."""
    torch.manual_seed(2)
    x = torch.randn(2, 3, 15, 17)  # odd sizes: the boxes must still mirror exactly
    views = TestViews("hflip+crops")
    originals = [views.apply(x, v) for v in views]
    mirrored = [views.apply(x.flip(-1), v).flip(-1) for v in views]
    for out in mirrored:
        assert any(torch.allclose(out, o, atol=1e-5) for o in originals)
