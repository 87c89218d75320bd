"""transforms.py: batches augmented and normalised on the device (BatchTransform), and Mixup and
CutMix (BatchMix): soft targets, seeding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune import data
from finetune.data.transforms import BatchMix, BatchTransform
from finetune.recipe import AugmentConfig

N, C = 8, 3


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])


def _kinds(mix: BatchMix, pixels, labels, seeds) -> list[str]:
    """What each seed did to the batch: 'mixup', 'cutmix' or 'none'."""
    out = []
    for seed in seeds:
        mixed, targets = mix(pixels.clone(), labels, C, seed=seed)
        if torch.equal(targets, F.one_hot(labels, C).float()):
            assert torch.equal(mixed, pixels)
            out.append("none")
        elif (mixed == pixels).all(dim=1).any():  # some pixels exactly untouched: a pasted box
            out.append("cutmix")
        else:
            out.append("mixup")
    return out


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_soft_targets_sum_to_one_and_are_reproducible_per_seed(batch, mixup, cutmix) -> None:
    pixels, labels = batch
    mix = BatchMix(mixup, cutmix)
    before = torch.random.get_rng_state()
    mixed, targets = mix(pixels.clone(), labels, C, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before), "the global generator must be left as it was"
    assert targets.shape == (N, C) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(N)) and (targets >= 0).all()
    # Each target mixes the image's own class and its neighbour's (v2 pairs consecutive images).
    own = targets.gather(1, labels[:, None])[:, 0]
    assert (own >= 0).all() and not torch.equal(targets, F.one_hot(labels, C).float())
    again = mix(pixels.clone(), labels, C, seed=7)
    assert torch.equal(mixed, again[0]) and torch.equal(targets, again[1])
    other = mix(pixels.clone(), labels, C, seed=8)
    assert not torch.equal(mixed, other[0])


def test_mixup_blends_images_in_the_proportion_of_their_targets(batch) -> None:
    pixels, labels = batch
    mixed, targets = BatchMix(mixup_alpha=0.4)(pixels.clone(), labels, C, seed=3)
    onehot = F.one_hot(labels, C).float()
    assert labels[0] != labels[-1]  # image 0 is mixed with the last one, of another class:
    lam = float(targets[0, labels[0]])  # its own class's share is the mixing weight
    assert torch.allclose(targets, lam * onehot + (1 - lam) * onehot.roll(1, 0), atol=1e-6)
    assert torch.allclose(mixed, lam * pixels + (1 - lam) * pixels.roll(1, 0), atol=1e-5)


def test_cutmix_pastes_a_box_whose_area_is_the_targets_share(batch) -> None:
    pixels, labels = batch
    mixed, targets = BatchMix(cutmix_alpha=1.0)(pixels.clone(), labels, C, seed=3)
    pasted = (mixed != pixels).any(dim=1)  # N×H×W: where a neighbour's pixels went
    assert torch.equal(mixed[:, :, ~pasted[0]], pixels[:, :, ~pasted[0]])
    assert torch.equal(mixed[:, :, pasted[0]], pixels.roll(1, 0)[:, :, pasted[0]])
    share = pasted[0].float().mean()
    onehot = F.one_hot(labels, C).float()
    assert torch.allclose(targets, (1 - share) * onehot + share * onehot.roll(1, 0), atol=1e-6)


def test_both_on_choose_one_per_batch_and_mix_prob_leaves_some_batches_alone(batch) -> None:
    pixels, labels = batch
    kinds = _kinds(BatchMix(0.4, 1.0, prob=0.5), pixels, labels, range(40))
    assert {"mixup", "cutmix", "none"} <= set(kinds)
    assert 8 <= kinds.count("none") <= 32
    assert set(_kinds(BatchMix(0.4, 0.0), pixels, labels, range(10))) == {"mixup"}
    assert set(_kinds(BatchMix(0.4, 0.0, prob=0.0), pixels, labels, range(5))) == {"none"}


# Multi-hot rows: images with several classes, one with none.
MULTI_HOT = torch.tensor(
    [[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.float32
)


def test_mixup_mixes_multi_hot_rows_with_the_images_weight(batch) -> None:
    """No one-hot conversion: each row is λ·its own multi-hot row + (1 − λ)·its neighbour's."""
    pixels, _ = batch
    mixed, targets = BatchMix(mixup_alpha=0.4)(pixels.clone(), MULTI_HOT, C, seed=3)
    diff = pixels - pixels.roll(1, 0)
    lam = float(((mixed - pixels.roll(1, 0)) * diff).sum() / (diff * diff).sum())  # recovered from the images
    assert 0 < lam < 1
    assert torch.allclose(mixed, lam * pixels + (1 - lam) * pixels.roll(1, 0), atol=1e-5)
    assert targets.shape == (N, C) and targets.dtype == torch.float32
    assert torch.allclose(targets, lam * MULTI_HOT + (1 - lam) * MULTI_HOT.roll(1, 0), atol=1e-6)
    # A class both images have stays 1; one neither has stays 0; rows need not sum to 1.
    both = (MULTI_HOT * MULTI_HOT.roll(1, 0)).bool()
    assert torch.all(targets[both] == 1) and torch.all(targets[(MULTI_HOT + MULTI_HOT.roll(1, 0)) == 0] == 0)
    # The same draws as for class indices under the same seed: the mix does not depend on the targets' form.
    same, _ = BatchMix(mixup_alpha=0.4)(pixels.clone(), torch.tensor([0, 1, 2, 0, 1, 2, 2, 1]), C, seed=3)
    assert torch.equal(mixed, same)


def test_cutmix_mixes_multi_hot_rows_by_the_pasted_area(batch) -> None:
    pixels, _ = batch
    mixed, targets = BatchMix(cutmix_alpha=1.0)(pixels.clone(), MULTI_HOT, C, seed=3)
    share = (mixed != pixels).any(dim=1)[0].float().mean()  # the neighbour's share of every image
    assert 0 < share < 1
    assert torch.allclose(targets, (1 - share) * MULTI_HOT + share * MULTI_HOT.roll(1, 0), atol=1e-6)


def test_unmixed_multi_hot_batches_keep_their_rows_and_bad_widths_are_refused(batch) -> None:
    pixels, _ = batch
    mixed, targets = BatchMix(0.4, 1.0, prob=0.0)(pixels.clone(), MULTI_HOT, C, seed=1)
    assert torch.equal(targets, MULTI_HOT) and torch.equal(mixed, pixels)
    with pytest.raises(ValueError, match="N×4 rows"):
        BatchMix(mixup_alpha=0.4)(pixels.clone(), MULTI_HOT, 4, seed=1)


def test_channels_last_batches_stay_channels_last(batch) -> None:
    pixels, labels = batch
    mixed, _ = BatchMix(0.4, 1.0)(pixels.contiguous(memory_format=torch.channels_last), labels, C, seed=1)
    assert mixed.is_contiguous(memory_format=torch.channels_last)


def test_batch_transform_builds_the_mix_from_the_recipe_and_describes_it() -> None:
    plain = BatchTransform([0.5] * 3, [0.5] * 3, (16, 16), AugmentConfig(crop_scale=None, hflip=False))
    assert plain.mix is None and plain.describe() == "none"
    mixing = BatchTransform([0.5] * 3, [0.5] * 3, (16, 16), AugmentConfig(mixup_alpha=0.2, mix_prob=0.5))
    assert isinstance(mixing.mix, BatchMix) and mixing.mix.prob == 0.5
    assert "mixup (α=0.2)" in mixing.describe() and "random resized crop" in mixing.describe()
    assert mixing.without_augmentation().mix is None


def test_batch_transform_augments_each_image_independently() -> None:
    torch.manual_seed(0)
    pixels = torch.arange(2 * 3 * 16 * 16, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 3, 16, 16)
    pixels = torch.cat([pixels[:1]] * 8)
    t = data.BatchTransform([0.5] * 3, [0.5] * 3, (16, 16), AugmentConfig(crop_scale=[0.3, 1.0], hflip=True))
    out = t(pixels, train=True)
    assert out.dtype == torch.float32 and out.shape == (8, 3, 16, 16)
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) > 1  # not one draw for the batch
    evaluated = t(pixels, train=False)
    assert torch.allclose(evaluated[0], pixels[0].float() / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize("preset", ["trivial_augment", "rand_augment", "auto_augment", "augmix"])
def test_augmentation_presets_and_random_erasing(preset: str) -> None:
    pixels = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8)
    channels_last = pixels.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    augment = AugmentConfig(crop_scale=[0.5, 1.0], hflip=True, preset=preset, random_erasing=1.0)
    t = data.BatchTransform([0.5] * 3, [0.25] * 3, (16, 16), augment)
    assert f"horizontal flip, {type(t.augment.transforms[2]).__name__}, random erasing (p=1)" in t.describe()
    out = t(pixels, train=True, seed=3).clone()
    assert out.shape == (6, 3, 16, 16)
    # Seeded like the rest (exact resume), the same from either cache layout.
    assert torch.equal(out, t(channels_last, train=True, seed=3)) and not torch.equal(out, t(pixels, train=True, seed=4))
    # Erasing comes after normalisation: each image has a rectangle of 0, the mean colour.
    assert all((image == 0).all(dim=0).sum() >= 4 for image in out)
    # Evaluation, and a transform without augmentation, only normalise.
    plain = (pixels.float() / 255 - 0.5) / 0.25
    assert torch.allclose(t(pixels, train=False), plain, atol=1e-5)
    bare = t.without_augmentation()
    assert not bare.augments and bare.describe() == "none" and t.augments
    assert torch.allclose(bare(pixels, train=True, seed=3), plain, atol=1e-5)


def test_batch_transform_reuses_its_buffer_only_when_nothing_can_read_it() -> None:
    t = data.BatchTransform([0.5] * 3, [0.5] * 3, (8, 8), None)
    batches = [torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8) for _ in range(5)]
    expect = [b.float() / 127.5 - 1 for b in batches]
    first = t(batches[0], train=False)
    second = t(batches[1], train=False)  # `first` is still held: another buffer
    assert first.data_ptr() != second.data_ptr()
    assert torch.allclose(first, expect[0], atol=1e-6) and torch.allclose(second, expect[1], atol=1e-6)
    address = first.data_ptr()
    del first
    third = t(batches[2], train=False)  # the first buffer is free again: reused
    assert third.data_ptr() == address and torch.allclose(second, expect[1], atol=1e-6)
    # An autograd graph that saved the batch keeps it: not overwritten before backward.
    del third, second  # both pooled buffers are free now
    weight = torch.randn(2, 3, 3, 3, requires_grad=True)
    saved = t(batches[3], train=False)
    saved_at = saved.data_ptr()
    loss = torch.nn.functional.conv2d(saved, weight).square().sum()
    del saved  # only the graph holds it now
    held = [t(batches[4], train=False) for _ in range(2)]
    assert saved_at not in {h.data_ptr() for h in held}
    loss.backward()
    weight_copy = weight.detach().clone().requires_grad_(True)  # the gradient from a private copy
    torch.nn.functional.conv2d(expect[3], weight_copy).square().sum().backward()
    assert torch.allclose(weight.grad, weight_copy.grad, atol=1e-4)
    assert all(torch.allclose(h, expect[4], atol=1e-6) for h in held)
    # A short last batch is the front of a full buffer; inference-mode batches never share
    # memory with ones that autograd may save.
    short = t(batches[0][:3], train=False)
    assert short.shape == (3, 3, 8, 8) and torch.allclose(short, expect[0][:3], atol=1e-6)
    with torch.inference_mode():
        inference = t(batches[1], train=False)
    assert inference.is_inference() and not short.is_inference()


def test_channels_last_batches_hold_the_same_values() -> None:
    pixels = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    augment = AugmentConfig(crop_scale=[0.3, 1.0], hflip=True)
    plain = data.BatchTransform([0.4] * 3, [0.2] * 3, (12, 12), augment)
    last = data.BatchTransform([0.4] * 3, [0.2] * 3, (12, 12), augment, channels_last=True)
    for train in (False, True):
        a, b = plain(pixels, train=train, seed=7), last(pixels, train=train, seed=7)
        assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        assert torch.equal(a, b)


@pytest.mark.parametrize("size", [(32, 48), (24, 40)])  # crops resized up; and down in height
def test_batch_augmentation_draws_exactly_what_the_v2_compose_draws(size: tuple[int, int]) -> None:
    from finetune.recipe import AugmentConfig

    t = data.BatchTransform([0.4] * 3, [0.2] * 3, size, AugmentConfig(crop_scale=[0.08, 1.0], hflip=True))
    pixels = torch.randint(0, 256, (12, 3, 32, 48), dtype=torch.uint8)
    channels_last = pixels.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # as data.decode stores crops
    torch.manual_seed(3)
    composed = torch.stack([t.augment(image) for image in pixels])
    for layout in (pixels, channels_last):
        torch.manual_seed(3)
        direct = torch.stack([t._augment_one(image) for image in layout])
        assert torch.equal(composed, direct)
    # Whole batches, either layout: the compose's images, normalised.
    torch.manual_seed(9)
    expected = (torch.stack([t.augment(image) for image in pixels]).float() / 255 - 0.4) / 0.2
    for layout in (pixels, channels_last):
        batch = t(layout, train=True, seed=9)
        assert batch.shape == (12, 3, *size) and torch.allclose(batch, expected, atol=1e-5)
