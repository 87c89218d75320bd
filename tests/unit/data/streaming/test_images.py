"""finetune.data.streaming.images: one image decoded in a worker as the decode cache would decode it, and cropped from the original, seeded by its key and the epoch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.data.decode import Decoder
from finetune.data.streaming.images import ImagePipeline, decode_upright, key_seed
from finetune.recipe.schema import AugmentConfig
from finetune.utils.images import open_image, to_rgb
from tests.helpers.images import odd_images, png_claiming
from tests.helpers.streams import jpeg


@pytest.mark.parametrize("name", sorted(odd_images()))
def test_every_odd_image_decodes_to_the_caches_pixels(name: str) -> None:
    data = odd_images()[name]
    expected = np.asarray(to_rgb(open_image({"bytes": data, "path": None})))
    got = decode_upright({"bytes": data, "path": None}).permute(1, 2, 0).numpy()
    assert got.shape == expected.shape and (got == expected).all()


def test_an_rgb_jpeg_takes_libjpeg_turbo_with_pillows_bytes() -> None:
    rng = np.random.default_rng(0)
    data = jpeg(Image.fromarray(rng.integers(0, 256, (61, 97, 3), dtype=np.uint8)))
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert (decode_upright({"bytes": data, "path": None}).permute(1, 2, 0).numpy() == expected).all()


def test_truncated_and_bomb_images_are_refused(tmp_path) -> None:
    data = jpeg(Image.new("RGB", (64, 64), (10, 200, 30)))
    for cut in (len(data) // 2, len(data) - 10):
        with pytest.raises((RuntimeError, OSError), match="(?i)truncated"):
            decode_upright({"bytes": data[:cut], "path": None})
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(20000, 20000))
    with pytest.raises(Exception, match="decompression bomb"):
        decode_upright(str(path))


@pytest.fixture(scope="module")
def processor(tiny_vit):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(tiny_vit)


def test_the_training_crop_is_cut_from_the_original_image(processor) -> None:
    """The crop box is drawn on the image's own 400×300 pixels, as torchvision's
    RandomResizedCrop does on an original; a cache at the model's 32 px would have cut it
    from the shrunk copy."""
    from torchvision.transforms import v2

    rng = np.random.default_rng(1)
    original = torch.from_numpy(rng.integers(0, 256, (3, 300, 400), dtype=np.uint8))
    pipeline = ImagePipeline(processor, (32, 32), AugmentConfig(crop_scale=[0.08, 1.0], hflip=False), seed=7)
    got = pipeline(original, "a/b.jpg", epoch=2, train=True)
    torch.manual_seed(key_seed("a/b.jpg", 7, 2))
    expected = v2.RandomResizedCrop((32, 32), scale=(0.08, 1.0), antialias=True)(original)
    assert got.shape == (3, 32, 32) and torch.equal(got, expected)


def test_draws_depend_on_the_key_and_the_epoch(processor) -> None:
    original = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 64, 80), dtype=np.uint8))
    pipeline = ImagePipeline(processor, (32, 32), AugmentConfig(crop_scale=[0.2, 1.0], preset="trivial_augment"), seed=0)
    one = pipeline(original, "k", 0, True)
    assert torch.equal(one, pipeline(original, "k", 0, True))
    assert not torch.equal(one, pipeline(original, "k", 1, True))
    assert not torch.equal(one, pipeline(original, "other", 0, True))


def test_evaluation_is_the_processors_own_shaping(processor) -> None:
    original = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (3, 50, 70), dtype=np.uint8))
    pipeline = ImagePipeline(processor, (32, 32), AugmentConfig(), seed=0)
    expected = Decoder(processor, "", "").pixels([Image.fromarray(original.permute(1, 2, 0).numpy())])[0]
    assert torch.equal(pipeline(original, "k", 0, train=False), expected)
