"""The rules of finetune new, on made-up scans and timings (no model, no data)."""

from __future__ import annotations

import pytest

from finetune.planning import choose
from finetune.planning.scan import Scan
from finetune.planning.timing import Timing, interpolate


def scan(counts: list[int], side: int = 32, eval_images: int = 1000) -> Scan:
    n = sum(counts)
    return Scan(
        dataset="d", splits={"train": n, "test": eval_images}, train_split="train", eval_split="test",
        image_column="image", label_column="label", class_names=[f"c{i}" for i in range(len(counts))],
        counts=counts, multi_label=False, sizes=[(side, side)] * 4, headers_read=n,
    )


def timing(train_ms_at_96: float = 13.0) -> Timing:
    """Costs growing with the pixels, as a CNN's do."""
    sizes = choose.SIZES
    train = {s: train_ms_at_96 / 1000 * (s / 96) ** 2 for s in sizes}
    infer = {s: v / 3 for s, v in train.items()}
    return Timing(device="cpu", train=train, infer=infer, decode=0.0005, load=1.0, convolutional=True, blocks=7,
                  unfreeze_last_n=4)


@pytest.mark.parametrize("per_class, expected", [(5, "linear_probe"), (10, "linear_probe"), (49, "linear_probe"),
                                                 (50, "partial"), (200, "partial"), (999, "partial"), (1000, "full")])
def test_the_strategy_follows_the_images_per_class(per_class, expected):
    assert choose.strategy_for(scan([per_class] * 10))[0] == expected


def test_the_median_class_decides_not_a_rare_one():
    assert choose.strategy_for(scan([200] * 9 + [3]))[0] == "partial"


def test_small_images_cap_the_size_and_large_ones_keep_the_models():
    assert choose.size_cap(scan([10] * 3, side=32), 224)[0] == 96
    assert choose.size_cap(scan([10] * 3, side=50), 224)[0] == 128
    assert choose.size_cap(scan([10] * 3, side=400), 224)[0] == 224


def test_a_tiny_set_gets_a_batch_with_several_steps_an_epoch():
    assert choose.batch_size(2000) == 64
    assert choose.batch_size(100) == 8
    assert choose.batch_size(300) == 32


def test_more_budget_buys_a_larger_input_then_more_epochs():
    found, t = scan([220] * 10), timing()
    sizes = [s for s in choose.SIZES if s <= 224]
    small = choose.choose_size_and_epochs("partial", sizes, found, t, 4 * 60, 1980, 1000)
    large = choose.choose_size_and_epochs("partial", sizes, found, t, 60 * 60, 1980, 1000)
    assert small[0] < large[0] == 224
    assert small[1] >= choose.TARGET_EPOCHS
    for size, epochs, _ in (small, large):
        planned = sum(choose.plan_time("partial", size, epochs, found, t, 1980, 1000).values())
        assert planned <= (4 if (size, epochs) == small[:2] else 60) * 60 * choose.MARGIN


def test_a_budget_too_short_for_the_target_epochs_trains_fewer_at_the_smallest_size():
    found, t = scan([220] * 10), timing(train_ms_at_96=200.0)
    size, epochs, why = choose.choose_size_and_epochs("partial", list(choose.SIZES[:6]), found, t, 4 * 60, 1980, 1000)
    assert size == choose.SIZES[0]
    assert 0 < epochs < choose.TARGET_EPOCHS
    assert "fewer than" in why


def test_the_two_timed_sizes_give_the_others_on_their_power_law():
    measured = {64: 1.0, 256: 16.0}
    assert interpolate(measured, 128) == pytest.approx(4.0)
    assert interpolate({96: 2.0}, 192) == pytest.approx(8.0)
