"""stratify.py: the multi-label validation piece (iterative stratification) and subsets that keep every class, seeded pure functions of the labels."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.data import stratify


def random_sets(n: int, num_classes: int, seed: int, most: int = 3, skew: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(image, class) pairs of ``n`` images with 0 to ``most`` classes each; with ``skew`` > 1
    the later classes are rarer (a long tail of classes with a few images)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, num_classes + 1) ** skew
    weights /= weights.sum()
    rows, classes = [], []
    for i in range(n):
        k = int(rng.integers(0, most + 1))
        chosen = rng.choice(num_classes, size=min(k, num_classes), replace=False, p=weights)
        rows += [i] * len(chosen)
        classes += chosen.tolist()
    return np.asarray(rows, np.int64), np.asarray(classes, np.int64)


def counts(rows, classes, images, num_classes) -> np.ndarray:
    return np.bincount(classes[np.isin(rows, images)], minlength=num_classes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_class_of_two_or_more_images_is_in_both_pieces_when_there_is_room(seed: int) -> None:
    n, num = 300, 40
    rows, classes = random_sets(n, num, seed, skew=1.5)  # many classes of 1 to 5 images
    val = stratify.validation_piece(rows, classes, n, num, 60, seed)
    train = np.setdiff1d(np.arange(n), val)
    sizes = np.bincount(classes, minlength=num)
    assert len(val) == 60 and len(np.unique(val)) == 60
    in_val, in_train = counts(rows, classes, val, num), counts(rows, classes, train, num)
    assert ((in_val > 0) | (sizes < 2)).all(), "a class of 2 or more images is missing from the validation piece"
    assert ((in_train > 0) | (sizes == 0)).all(), "a class lost all its training images"


def test_a_small_piece_covers_the_rarest_classes_first_and_training_keeps_every_class() -> None:
    # Classes 0-3 with 2 images each, one image per class: a piece of 2 covers two classes.
    rows = np.arange(8)
    classes = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    val = stratify.validation_piece(rows, classes, 8, 4, 2, seed=0)
    assert len(val) == 2 and len(set(classes[val].tolist())) == 2
    # A class of one image never goes to the validation piece, whatever its size.
    val = stratify.validation_piece(np.arange(4), np.array([0, 1, 2, 3]), 4, 4, 3, seed=0)
    assert len(val) == 0


def test_an_image_bringing_several_missing_classes_is_preferred() -> None:
    # Image 0 has classes 0, 1 and 2; the others one class each: a piece of 1 takes image 0.
    rows = np.array([0, 0, 0, 1, 2, 3])
    classes = np.array([0, 1, 2, 0, 1, 2])
    assert stratify.validation_piece(rows, classes, 4, 3, 1, seed=5).tolist() == [0]


def test_each_class_gets_about_its_share_on_a_large_set() -> None:
    n, num = 4000, 12
    rows, classes = random_sets(n, num, 3)
    val = stratify.validation_piece(rows, classes, n, num, 400, seed=3)
    share = counts(rows, classes, val, num) / np.bincount(classes, minlength=num)
    assert len(val) == 400
    assert np.abs(share - 0.1).max() < 0.01, share


def test_the_piece_is_a_seeded_pure_function_of_the_pairs() -> None:
    n, num = 200, 8
    rows, classes = random_sets(n, num, 7)
    a = stratify.validation_piece(rows, classes, n, num, 30, seed=11)
    order = np.random.default_rng(0).permutation(len(rows))
    assert np.array_equal(a, stratify.validation_piece(rows[order], classes[order], n, num, 30, seed=11))
    doubled = np.concatenate([rows, rows[:5]]), np.concatenate([classes, classes[:5]])  # a pair given twice counts once
    assert np.array_equal(a, stratify.validation_piece(*doubled, n, num, 30, seed=11))
    assert not np.array_equal(a, stratify.validation_piece(rows, classes, n, num, 30, seed=12))
    assert np.array_equal(a, np.sort(a))


def test_images_without_a_class_fill_both_pieces() -> None:
    rows, classes = np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1])
    val = stratify.validation_piece(rows, classes, 20, 2, 5, seed=0)  # 16 images have no class
    assert len(val) == 5 and set(classes[np.isin(rows, val)].tolist()) == {0, 1}


def test_without_keep_a_piece_may_take_a_classes_only_images() -> None:
    rows, classes = np.arange(4), np.array([0, 1, 2, 3])
    assert len(stratify.validation_piece(rows, classes, 4, 4, 2, seed=0, keep=False)) == 2


def test_a_covering_sample_holds_every_class_it_can_and_has_its_size() -> None:
    n, num = 500, 30
    rows, classes = random_sets(n, num, 4, skew=1.5)
    present = np.flatnonzero(np.bincount(classes, minlength=num))
    chosen = stratify.covering_sample(rows, classes, n, num, len(present), seed=4)
    assert len(chosen) == len(present)
    assert set(present.tolist()) <= set(classes[np.isin(rows, chosen)].tolist())
    big = stratify.covering_sample(rows, classes, n, num, 200, seed=4)
    assert len(big) == 200 and np.array_equal(big, stratify.covering_sample(rows, classes, n, num, 200, seed=4))
    # Too small to hold every class: the rarest classes come first.
    rows, classes = np.arange(6), np.array([0, 0, 0, 1, 1, 2])
    assert classes[stratify.covering_sample(rows, classes, 6, 3, 2, seed=0)].tolist() in ([1, 2], [2, 1])
