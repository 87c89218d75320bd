"""Pixel hashes (exact copies) and thumbnails (re-encoded or resized copies) of decoded images."""

from __future__ import annotations

import io

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as HFImage
from PIL import Image

from finetune import data
from finetune.data.signatures import thumbnails_of


def textured(seed: int, size: int = 32) -> Image.Image:
    """A smooth random picture (blobs of colour), the kind of structure photos have."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def processor(size: int = 32):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": size, "width": size})


def decoded(images: list[Image.Image], channels_last: bool = False, size: int = 32):
    features = Features({"img": HFImage(), "label": ClassLabel(names=["a", "b"])})
    ds = Dataset.from_dict({"img": images, "label": [0] * len(images)}, features=features)
    return data.decode(ds, processor(size), "img", "label", None, "decode", channels_last=channels_last).dataset


def test_equal_pixels_share_a_hash_whatever_the_stored_layout() -> None:
    images = [textured(0), textured(1), textured(0)]
    chw = data.signatures(decoded(images))
    hwc = data.signatures(decoded(images, channels_last=True))
    assert chw.hashes[0] == chw.hashes[2] != chw.hashes[1]
    assert chw.hashes == hwc.hashes
    assert torch.allclose(chw.thumbnails, hwc.thumbnails)


def test_a_re_encoded_or_resized_copy_keeps_its_thumbnail_and_another_image_does_not() -> None:
    base = [textured(s) for s in range(20)]
    copies = [jpeg(im) for im in base[:10]] + [jpeg(im.resize((28, 28), Image.Resampling.BILINEAR)) for im in base[10:]]
    original = data.signatures(decoded(base)).thumbnails
    copied = data.signatures(decoded(copies)).thumbnails
    same = (original * copied).sum(1)
    assert (same > 0.95).all(), same
    others = original @ original.t()
    others.fill_diagonal_(-1)
    assert others.max() < same.min()
    assert torch.allclose(original.norm(dim=1), torch.ones(20), atol=1e-5)


def test_a_flat_image_has_a_zero_thumbnail() -> None:
    flat = torch.full((1, 3, 8, 8), 120, dtype=torch.uint8)
    assert thumbnails_of(flat).abs().max() == 0


def test_a_copy_in_a_split_stored_at_another_size_shares_its_hash() -> None:
    """A split of 24-px images is stored at 24 px; one that also holds a 20-px image at the
    model's 32: given the processor, both are hashed at 32 px, as the model gets them."""
    small = decoded([textured(0, size=24), textured(1, size=24)])
    mixed = decoded([textured(0, size=24), textured(2, size=20)])
    assert data.image_size(small) != data.image_size(mixed)
    assert data.signatures(small).hashes[0] != data.signatures(mixed).hashes[0]
    a, b = data.signatures(small, processor()), data.signatures(mixed, processor())
    assert a.hashes[0] == b.hashes[0] and a.hashes[1] != b.hashes[1]
    assert torch.allclose(a.thumbnails[0], b.thumbnails[0], atol=1e-6)
