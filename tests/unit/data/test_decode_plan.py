"""decode_plan.py and the decode pass's memory: batches shrink and workers fit the budget for
large photos, the processor is fed in sub-batches without changing a byte, and the pass runs
in pieces that are cached one by one and concatenated in order."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image

from finetune import data
from finetune.data import decode_plan
from finetune.data.decode_plan import DECODE_MEMORY, MAX_BATCH, PROCESSOR_COPIES, plan


def test_small_images_keep_the_usual_batches_workers_and_one_piece() -> None:
    p = plan([(32, 32)] * 256, 50_000, None)
    assert p.batch_size == MAX_BATCH and p.pieces == [(0, 50_000)]
    assert p.workers is None or p.workers > 1  # automatic: several for a large split on a machine that has cores
    assert plan([(32, 32)] * 10, 100, None).workers is None  # a small split: in this process


@pytest.mark.parametrize("megapixels", [24, 100])
def test_the_batch_shrinks_and_the_workers_fit_the_budget_for_camera_photos(megapixels: int, caplog) -> None:
    side = int((megapixels * 1e6) ** 0.5)
    with caplog.at_level(logging.INFO, logger="finetune.data.decode_plan"):
        p = plan([(side, side)] * 256, 4000, 8)
    footprint = 3 * side * side * PROCESSOR_COPIES
    assert p.batch_size < MAX_BATCH and p.batch_size * footprint <= p.hold_bytes
    assert (p.workers or 1) * footprint <= DECODE_MEMORY  # every worker's photo in hand fits the budget
    if 8 * footprint > DECODE_MEMORY:  # 100 MP: fewer workers, and the log says so
        assert (p.workers or 1) < 8 and "instead of 8" in caplog.text
    # Batches shrink with the images' size.
    sizes = [plan([(s, s)] * 4, 1000, 2).batch_size for s in (256, 1024, 2048, 4096, 8192)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == MAX_BATCH and sizes[-1] == 1


def test_pieces_hold_about_the_same_source_pixels_and_cover_the_split_in_order() -> None:
    p = plan([(1000, 1000)] * 50, 5000, None)
    assert p.pieces[0] == (0, decode_plan.PIECE_PIXELS // 1_000_000)
    assert [a for a, _ in p.pieces[1:]] == [b for _, b in p.pieces[:-1]] and p.pieces[-1][1] == 5000
    assert plan([(1000, 1000)] * 50, 5000, None, chunked=False).pieces == [(0, 5000)]  # in memory: one


def _jpegs(sizes: list[tuple[int, int]], seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    images = []
    for h, w in sizes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        images.append({"bytes": buf.getvalue(), "path": None})
    features = Features({"image": ImageFeature(decode=False), "label": ClassLabel(names=["a", "b"])})
    return Dataset.from_dict({"image": images, "label": [i % 2 for i in range(len(sizes))]}, features=features)


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_resnet", "tiny_timm"])
def test_feeding_the_processor_image_by_image_gives_the_same_bytes(fixture: str, request) -> None:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(request.getfixturevalue(fixture))
    batch = _jpegs([(300, 200), (64, 64), (500, 700), (120, 90), (41, 333)])[:]
    whole = data.Decoder(processor, "image", "label")  # the batch through the processor at once, as before
    calls: list[int] = []
    one_by_one = data.Decoder(processor, "image", "label")
    one_by_one.hold_bytes = 1  # any image is over it: each goes alone
    real = one_by_one._stored
    one_by_one._stored = lambda images: calls.append(len(images)) or real(images)
    a, b = whole(batch), one_by_one(batch)
    assert calls == [1] * 5
    assert all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a["pixel_values"], b["pixel_values"]))


def test_small_images_decode_to_the_same_bytes_as_the_processor_on_the_whole_batch(tiny_vit) -> None:
    """The decode pass with its plan (no sub-batches for images this small) gives exactly what
    the processor gives for the batch at once."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    split = _jpegs([(48, 64)] * 6 + [(64, 48)] * 6)
    decoded = data.decode(split, processor, "image", "label", None, "t").dataset
    images = [Image.open(io.BytesIO(v["bytes"])).convert("RGB") for v in split["image"]]
    expected = processor(images=images, return_tensors="pt", do_rescale=False, do_normalize=False)["pixel_values"]
    assert torch.equal(torch.as_tensor(decoded[:]["pixel_values"]), expected.round().to(torch.uint8))


def test_a_split_decoded_in_pieces_equals_one_decoded_whole(tiny_vit, tmp_path, monkeypatch) -> None:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    _jpegs([(40 + i, 50) for i in range(10)]).save_to_disk(str(tmp_path / "split"))
    split = load_from_disk(str(tmp_path / "split"))  # cached in files: pieces apply
    whole = data.decode(split, processor, "image", "label", None, "whole").dataset
    monkeypatch.setattr(decode_plan, "PIECE_PIXELS", 3 * 45 * 50)
    monkeypatch.setattr(decode_plan, "MIN_PIECE", 3)
    pieces = data.decode(split, processor, "image", "label", None, "pieces").dataset
    files = {f["filename"] for f in pieces.cache_files if "cache-" in f["filename"]}
    assert len(files) == 4  # 3 + 3 + 3 + 1 images
    assert torch.equal(torch.as_tensor(pieces[:]["pixel_values"]), torch.as_tensor(whole[:]["pixel_values"]))
    assert pieces[:]["labels"].tolist() == whole[:]["labels"].tolist()
