"""images.py: every kind of image file read upright as RGB, and decompression bombs refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from finetune import data
from tests.helpers.images import odd_images, png_claiming


def test_every_kind_of_image_becomes_rgb() -> None:
    cases = odd_images()
    out = {name: data.to_rgb(data.open_image({"bytes": raw, "path": None})) for name, raw in cases.items()}
    assert all(im.mode == "RGB" for im in out.values())
    px = {name: np.asarray(im) for name, im in out.items()}
    assert (px["gray_alpha"] == 255).all() and (px["rgba"] == 255).all()  # transparent → white background
    assert (px["palette_transparent"] == 255).all()
    assert (px["16bit"] == 255).all() and (px["16bit_mid"] == 128).all()  # rescaled, not clipped
    assert tuple(px["animated"][0, 0]) == (255, 0, 0) or px["animated"][0, 0, 0] > 200  # first frame
    assert px["cmyk"][0, 0, 0] > 200 and px["cmyk"][0, 0, 1] < 60
    assert out["strip"].size == (1, 400)
    # EXIF 6 = rotate 90° clockwise to display: 40×20 becomes 20×40 with red on top.
    assert out["exif"].size == (20, 40)
    assert px["exif"][:20, :, 0].mean() > 200 and px["exif"][20:, :, 0].mean() < 50


def test_decompression_bomb_is_refused_without_changing_pillow() -> None:
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises((Image.DecompressionBombError, Image.DecompressionBombWarning)):
        data.open_image({"bytes": png_claiming(20000, 20000), "path": None})
    assert Image.MAX_IMAGE_PIXELS == limit
