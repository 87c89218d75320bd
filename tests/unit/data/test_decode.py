"""decode.py: the one-off decode pass gives the processor's pixels, sets bad files aside and is
cached by fingerprint; small images are cached at their own size and resized per batch on the device."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from finetune import data
from finetune.recipe import AugmentConfig
from tests.helpers.data import labelled
from tests.helpers.images import class_image, odd_images
from tests.helpers.models import make_tiny_vit


def _noise(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def _split(sizes: list[tuple[int, int]], seed: int = 0) -> Dataset:
    """PNG images of the given (height, width)s, two classes."""
    rng = np.random.default_rng(seed)
    images = []
    for size in sizes:
        buf = io.BytesIO()
        _noise(size, rng).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    return Dataset.from_dict({"image": images, "label": [i % 2 for i in range(len(sizes))]}, features=features)


def _pil(split: Dataset) -> list[Image.Image]:
    return [image.convert("RGB") for image in split["image"]]


def _vit(tiny_vit: Path):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(tiny_vit)


def _before(processor, images: list[Image.Image]) -> torch.Tensor:
    """What reached the model before the cache kept small images small: the processor's uint8
    bytes, normalised the way BatchTransform always has (copy, then × scale + shift)."""
    pixels = data.Decoder(processor, "image", "label").pixels(images)
    mean, std = data.processor_normalization(processor)
    plain = data.BatchTransform(mean, std, tuple(pixels.shape[-2:]), None)
    out = torch.empty(pixels.shape)
    out.copy_(pixels)
    return out.mul_(plain.scale).add_(plain.shift)


@pytest.mark.parametrize("channels_last", [False, True])
def test_images_smaller_than_the_model_are_cached_at_their_own_size(tiny_vit: Path, channels_last: bool) -> None:
    split = _split([(8, 12)] * 5)
    decoded = data.decode(split, _vit(tiny_vit), "image", "label", None, "t", channels_last=channels_last).dataset
    assert data.image_size(decoded) == (8, 12) and data.output_size(_vit(tiny_vit)) == (32, 32)
    batch = data.collate(data.FastRows(decoded).__getitems__(list(range(5))))["pixel_values"]
    # The image's own RGB bytes: no resize, no processor.
    originals = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in _pil(split)])
    assert batch.shape == (5, 3, 8, 12) and torch.equal(batch, originals)


@pytest.mark.parametrize("size", [(8, 8), (20, 30), (31, 17)])
def test_small_images_reach_the_model_exactly_as_the_processor_makes_them(tiny_vit: Path, size) -> None:
    processor = _vit(tiny_vit)
    split = _split([size] * 6, seed=sum(size))
    decoded = data.decode(split, processor, "image", "label", None, "t").dataset
    assert data.image_size(decoded) == size
    transform = data.BatchTransform.for_processor(processor, None)
    stored = data.collate(data.FastRows(decoded).__getitems__(list(range(6))))["pixel_values"]
    # On CPU the resize gives the processor's bytes exactly, so the model gets what it got
    # when the cache held the processor's output.
    assert torch.equal(transform.resize(stored), data.Decoder(processor, "image", "label").pixels(_pil(split)))
    assert torch.equal(transform(stored, train=False), _before(processor, _pil(split)))
    # And what the processor itself gives (and so finetune predict), to float rounding.
    theirs = processor(images=_pil(split), return_tensors="pt")["pixel_values"]
    assert torch.allclose(transform(stored, train=False), theirs, atol=1e-5)
    # Through the feature-cache path (a transform without augmentation) alike.
    augmenting = data.BatchTransform.for_processor(processor, AugmentConfig(crop_scale=[0.5, 1.0], hflip=True))
    assert torch.equal(augmenting.without_augmentation()(stored, train=True), _before(processor, _pil(split)))


def test_a_gpus_float_resize_stays_within_one_level_of_the_processor(tiny_vit: Path) -> None:
    # Off the CPU torchvision resizes uint8 pixels in float and rounds: the documented
    # tolerance, checked here through that same float path.
    processor = _vit(tiny_vit)
    resize = data.ProcessorResize(processor)
    images = [_noise((13, 21), np.random.default_rng(i)) for i in range(4)]
    batch = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    floats = resize._geometry(batch.float()).round().clamp(0, 255)
    expected = data.Decoder(processor, "image", "label").pixels(images).float()
    assert (floats - expected).abs().max() <= data.resize.FLOAT_TOLERANCE


@pytest.mark.parametrize("sizes", [[(32, 32)] * 4, [(48, 40)] * 4, [(16, 16), (48, 48), (16, 16)]])
def test_batches_are_byte_identical_to_before_where_the_sizes_agree(tiny_vit: Path, sizes) -> None:
    # The model's own size, larger photos, and mixed sizes: stored through the processor at
    # the model's size, as before, and what reaches the model has not changed by a bit.
    processor = _vit(tiny_vit)
    split = _split(sizes)
    decoded = data.decode(split, processor, "image", "label", None, "t").dataset
    assert data.image_size(decoded) == (32, 32)
    rows = list(range(len(sizes)))
    stored = data.collate(data.FastRows(decoded).__getitems__(rows))["pixel_values"]
    transform = data.BatchTransform.for_processor(processor, AugmentConfig(crop_scale=[0.3, 1.0], hflip=True))
    assert torch.equal(transform(stored, train=False), _before(processor, _pil(split)))
    # Training crops: the same draws and bytes as a transform that never resizes.
    mean, std = data.processor_normalization(processor)
    old = data.BatchTransform(mean, std, (32, 32), AugmentConfig(crop_scale=[0.3, 1.0], hflip=True))
    assert torch.equal(transform(stored, train=True, seed=5), old(stored, train=True, seed=5))


def test_training_crops_of_small_images_come_out_at_the_models_size(tiny_vit: Path) -> None:
    processor = _vit(tiny_vit)
    decoded = data.decode(_split([(12, 12)] * 6), processor, "image", "label", None, "t", channels_last=True).dataset
    stored = data.collate(data.FastRows(decoded).__getitems__(list(range(6))))["pixel_values"]
    transform = data.BatchTransform.for_processor(processor, AugmentConfig(crop_scale=[0.3, 1.0], hflip=True))
    first = transform(stored, train=True, seed=3).clone()
    assert first.shape == (6, 3, 32, 32)
    assert torch.equal(first, transform(stored, train=True, seed=3))  # seeded: resumes exactly
    flips = data.BatchTransform.for_processor(processor, AugmentConfig(crop_scale=None, hflip=True))
    assert flips(stored, train=True, seed=3).shape == (6, 3, 32, 32)  # resized, then flipped


def test_the_cache_of_32px_images_for_a_224px_model_is_about_49x_smaller(tmp_path: Path) -> None:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(make_tiny_vit(tmp_path / "vit224", image_size=224))
    small = data.decode(_split([(32, 32)] * 12), processor, "image", "label", None, "small").dataset
    # The same images and one of another size: the split is stored at the model's size.
    model_size = data.decode(_split([(32, 32)] * 12 + [(31, 32)]), processor, "image", "label", None, "mixed").dataset
    assert data.image_size(small) == (32, 32) and data.image_size(model_size) == (224, 224)
    per_image = small.data.nbytes / len(small)
    ratio = (model_size.data.nbytes / len(model_size)) / per_image
    assert 3 * 32 * 32 <= per_image < 3 * 32 * 32 * 1.2  # the pixels and Arrow's list offsets
    assert 40 < ratio <= 49, ratio


def test_an_image_the_size_sample_missed_sends_the_split_to_the_models_size(tiny_vit: Path, monkeypatch) -> None:
    decode_module = sys.modules["finetune.data.decode"]
    monkeypatch.setattr(decode_module, "SIZE_SAMPLES", 2)  # the first and last image only
    processor = _vit(tiny_vit)
    split = _split([(8, 8), (8, 8), (9, 8), (8, 8)])
    undecoded = split.cast_column("image", ImageFeature(decode=False))
    assert decode_module.sampled_small_size(undecoded, "image", (32, 32)) == (8, 8)
    decoded = data.decode(split, processor, "image", "label", None, "t")
    assert data.image_size(decoded.dataset) == (32, 32) and len(decoded.dataset) == 4 and not decoded.bad
    assert torch.equal(
        data.BatchTransform.for_processor(processor, None)(decoded.dataset[:]["pixel_values"], train=False),
        _before(processor, _pil(split)),
    )


@pytest.mark.parametrize("fixture", ["tiny_resnet", "tiny_timm"])
def test_a_resize_the_device_cannot_repeat_keeps_the_model_size(fixture: str, request) -> None:
    # ConvNeXt's bicubic (torch's uint8 kernel clamps between passes, a GPU's float path does
    # not) and timm's PIL bicubic: small images are still stored through the processor.
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(request.getfixturevalue(fixture))
    decoder = data.Decoder(processor, "image", "label")
    assert not data.ProcessorResize(processor).matches((8, 8), decoder.pixels)
    decoded = data.decode(_split([(8, 8)] * 3), processor, "image", "label", None, "t").dataset
    assert data.image_size(decoded) == data.output_size(processor) == (32, 32)


def test_the_decode_pass_logs_its_cache_size_and_place(tiny_vit: Path, tmp_path: Path, caplog) -> None:
    folder = tmp_path / "images"
    for i in range(4):
        (folder / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        _noise((10, 10), np.random.default_rng(i)).save(folder / ("a" if i % 2 else "b") / f"{i}.png")
    from datasets import load_dataset

    raw = load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))["train"]
    with caplog.at_level(logging.INFO, logger="finetune"):
        decoded = data.decode(raw, _vit(tiny_vit), "image", "label", None, "decoding train").dataset
    line = next(r.getMessage() for r in caplog.records if "decode cache" in r.getMessage())
    folder_of_cache = str(Path(decoded.cache_files[0]["filename"]).parent)
    assert line.startswith("data: decoding train: decode cache ") and f" MB in {folder_of_cache} " in line
    assert "4 images at their own 10×10" in line and "32×32" in line


@pytest.fixture(params=["tiny_vit", "tiny_resnet", "tiny_timm"])
def processor(request):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(request.getfixturevalue(request.param))


def test_decoded_pixels_match_the_processor(processor) -> None:
    raw = labelled([3, 3])
    decoded = data.decode(raw["train"], processor, "image", "label", None, "test")
    transform = data.BatchTransform.for_processor(processor, None)
    ours = transform(decoded.dataset[:]["pixel_values"], train=False)
    theirs = processor(images=[im.convert("RGB") for im in raw["train"]["image"]], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    # Same pixels to the rounding of uint8.
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_decode_takes_the_processors_uint8_way_and_it_gives_the_float_ways_bytes(processor) -> None:
    # The fast way (the processor's resize/crop with its float steps off, 10x faster) is the
    # one taken for ViT, ConvNeXt-style and timm processors, and gives the same bytes.
    decoder = data.Decoder(processor, "image", "label")
    assert decoder.way == "uint8"
    images = [im.convert("RGB") for im in labelled([3, 3], seed=5)["train"]["image"]]
    images.append(Image.fromarray(np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)))
    assert torch.equal(decoder._uint8(images), decoder._float(images))


def test_a_processor_that_ignores_the_switches_keeps_the_float_way(tiny_vit) -> None:
    from transformers import AutoImageProcessor

    real = AutoImageProcessor.from_pretrained(tiny_vit)

    class AlwaysNormalises:  # takes do_rescale / do_normalize but does not obey them
        image_mean, image_std, rescale_factor, do_rescale = real.image_mean, real.image_std, real.rescale_factor, True

        def __call__(self, images, return_tensors="pt", **ignored):
            return real(images=images, return_tensors=return_tensors)

    decoder = data.Decoder(AlwaysNormalises(), "image", "label")
    assert decoder.way == "float"
    images = [im.convert("RGB") for im in labelled([2, 2])["train"]["image"]]
    assert torch.equal(decoder.pixels(images), data.Decoder(real, "image", "label")._uint8(images))


def test_decode_sets_bad_files_aside(tmp_path: Path, processor) -> None:
    good = tmp_path / "good.png"
    class_image("red", np.random.default_rng(0)).save(good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    buf = io.BytesIO()
    class_image("red", np.random.default_rng(0), 64).save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    paths = [str(tmp_path / n) for n in ("good.png", "empty.png", "text.jpg", "truncated.jpg")]
    ds = Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1]}).cast_column("image", ImageFeature())
    decoded = data.decode(ds, processor, "image", "label", None, "test")
    assert len(decoded.dataset) == 1
    assert sorted(Path(b["path"]).name for b in decoded.bad) == ["empty.png", "text.jpg", "truncated.jpg"]
    assert all(b["reason"] for b in decoded.bad)


def test_decode_is_cached_by_fingerprint(processor) -> None:
    raw = labelled([3, 3])
    first = data.decode(raw["train"], processor, "image", "label", None, "a").dataset
    second = data.decode(raw["train"], processor, "image", "label", None, "b").dataset
    assert first._fingerprint == second._fingerprint


def test_a_channels_last_decode_gives_the_same_batches(processor) -> None:
    # A split that is randomly cropped every step is stored H×W×3, the layout of
    # torch's uint8 resize; FastRows still gives N×3×H×W batches of the same values.
    raw = labelled([3, 4])["train"]
    plain = data.decode(raw, processor, "image", "label", None, "chw").dataset
    last = data.decode(raw, processor, "image", "label", None, "hwc", channels_last=True).dataset
    assert data.pixel_column(plain) == "pixel_values" and data.pixel_column(last) == data.HWC_COLUMN
    assert last._fingerprint != plain._fingerprint  # two caches, never one read as the other
    assert data.image_size(last) == data.image_size(plain) == tuple(plain[0]["pixel_values"].shape[1:])
    indices = [6, 0, 3, 3, 1]
    a = data.collate(data.FastRows(plain).__getitems__(indices))
    b = data.collate(data.FastRows(last).__getitems__(indices))
    assert b["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
    assert torch.equal(data.FastRows(last)[6]["pixel_values"], a["pixel_values"][0])
    # No bigger on disk: stored as H×W×3 Arrow would keep an offset for every pixel.
    assert last.data.nbytes <= plain.data.nbytes * 1.05


def test_odd_images_decode_to_the_model_size(processor) -> None:
    cases = odd_images()
    ds = Dataset.from_dict(
        {"image": [{"bytes": b, "path": f"{n}.bin"} for n, b in cases.items()], "label": [0] * len(cases)},
        features=Features({"image": ImageFeature(decode=False), "label": Value("int64")}),
    )
    decoded = data.decode(ds, processor, "image", "label", None, "odd")
    assert decoded.bad == [] and len(decoded.dataset) == len(cases)
    shape = decoded.dataset[0]["pixel_values"].shape
    assert shape[0] == 3 and all(d["pixel_values"].shape == shape for d in decoded.dataset)
