"""splits.py: honest seeded splits: stratified and balanced samples, the validation piece, and errors that name their cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune import data
from tests.helpers.data import cfg, labelled

# ------------------------------------------------------------------------- samplers


def test_stratified_sample_keeps_class_shares_and_is_seeded() -> None:
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    idx = data.stratified_sample(labels, 100, seed=3)
    assert len(idx) == 100 == len(set(idx.tolist()))
    assert np.bincount(labels[idx]).tolist() == [50, 30, 20]
    assert np.array_equal(idx, data.stratified_sample(labels, 100, seed=3))
    assert not np.array_equal(idx, data.stratified_sample(labels, 100, seed=4))


def test_balanced_sample_spreads_evenly_and_gives_shortfall_to_others() -> None:
    labels = np.repeat([0, 1, 2], [100, 100, 5])
    idx = data.balanced_sample(labels, 60, seed=0)
    assert np.bincount(labels[idx]).tolist() == [28, 27, 5] or np.bincount(labels[idx]).tolist() == [27, 28, 5]
    kshot = data.balanced_sample(labels, None, seed=0, per_class=4)
    assert np.bincount(labels[kshot]).tolist() == [4, 4, 4]
    assert np.array_equal(kshot, data.balanced_sample(labels, None, seed=0, per_class=4))


# --------------------------------------------------------------------------- splits


def test_validation_piece_is_stratified_disjoint_and_reproducible() -> None:
    raw = labelled([30, 20, 10])
    a = data.make_splits(raw, cfg(validation_fraction=0.2), seed=7)
    b = data.make_splits(raw, cfg(validation_fraction=0.2), seed=7)
    assert len(a.validation) == 12 and len(a.train) == 48
    assert np.bincount(np.asarray(a.validation["label"])).tolist() == [6, 4, 2]
    assert a.validation["label"][:] == b.validation["label"][:]
    assert a.eval_name == "test" and len(a.eval) == len(raw["test"])
    # The validation piece is never the eval split.
    assert a.validation is not a.eval


def test_kshot_validation_comes_from_the_rest_of_train() -> None:
    raw = labelled([20, 20, 20])
    raw["train"] = raw["train"].add_column("row", list(range(60)))
    s = data.make_splits(raw, cfg(samples_per_class=4, validation_fraction=0.5), seed=1)
    train_rows, val_rows = set(s.train["row"]), set(s.validation["row"])
    assert len(train_rows) == 12 and np.bincount(np.asarray(s.train["label"])).tolist() == [4, 4, 4]
    assert len(val_rows) == 6 and not train_rows & val_rows
    again = data.make_splits(raw, cfg(samples_per_class=4, validation_fraction=0.5), seed=1)
    assert set(again.train["row"]) == train_rows and set(again.validation["row"]) == val_rows


def test_max_samples_are_class_balanced() -> None:
    raw = labelled([40, 40, 40])
    s = data.make_splits(raw, cfg(max_train_samples=30, max_eval_samples=9, validation_fraction=0.1), seed=0)
    assert np.bincount(np.asarray(s.train["label"])).tolist() == [10, 10, 10]
    assert np.bincount(np.asarray(s.eval["label"])).tolist() == [3, 3, 3]
    assert len(s.validation) == 3


def test_eval_split_null_reports_the_validation_piece() -> None:
    raw = labelled([10, 10, 10])
    s = data.make_splits(raw, cfg(eval_split=None, validation_fraction=0.3), seed=0)
    assert s.eval is s.validation and "validation piece" in s.eval_name


def test_split_errors_name_the_fix() -> None:
    raw = labelled([5, 5])
    with pytest.raises(data.DataError, match="data.eval_split: 'valid' is not a split.*it has: train, test"):
        data.make_splits(raw, cfg(eval_split="valid"), seed=0)
    with pytest.raises(data.DataError, match="names the training split"):
        data.make_splits(raw, cfg(eval_split="train"), seed=0)


def _class_folder(root: Path, counts: dict[str, int]) -> Path:
    """An image folder (one sub-folder per class) with ``counts`` images per class."""
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.4])
def test_a_class_with_one_image_keeps_it_for_training(tmp_path: Path, fraction: float) -> None:
    """Class a's only image and one of b's two stay in train; the validation piece stays at
    round(fraction × images), made up from the other classes, and the notes name a."""
    counts = {"a": 1, "b": 2, "c": 11, "d": 11, "e": 11, "f": 11}
    root = _class_folder(tmp_path / "imgs", counts)
    c = cfg(dataset=str(root), eval_split=None, validation_fraction=fraction)
    s = data.make_splits(data.load_raw(c), c, seed=0)
    train = np.bincount(np.asarray(s.train["label"][:]), minlength=6)
    val = np.bincount(np.asarray(s.validation["label"][:]), minlength=6)
    assert s.class_names == list(counts)
    assert (train >= 1).all() and val[0] == 0 and val[1] <= 1, (train, val)
    assert val.sum() == round(fraction * 47) and (train + val).tolist() == list(counts.values())
    assert any("class(es) a have no validation images" in note for note in s.notes), s.notes
    again = data.make_splits(data.load_raw(c), c, seed=0)
    assert again.validation["label"][:] == s.validation["label"][:]


def test_the_validation_piece_keeps_a_training_image_of_every_class() -> None:
    """Over many class sizes and fractions: every class keeps one training image, the piece
    is as large as that allows, a sample no cap touches is the plain largest-remainder one
    (the splits of existing runs do not move), and it is a function of labels and seed."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(1, 15, size=rng.integers(2, 9))
        labels = np.repeat(np.arange(len(sizes)), sizes)
        n = int(round(rng.uniform(0.05, 0.9) * len(labels)))
        seed = int(rng.integers(1000))
        idx = data.stratified_sample(labels, n, seed, keep=1)
        taken = np.bincount(labels[idx], minlength=len(sizes))
        assert len(set(idx.tolist())) == len(idx) == min(n, int((sizes - 1).sum()))
        assert (taken <= sizes - 1).all(), (sizes, taken)
        assert np.array_equal(idx, data.stratified_sample(labels, n, seed, keep=1))
        plain = data.stratified_sample(labels, n, seed)
        if (np.bincount(labels[plain], minlength=len(sizes)) <= sizes - 1).all():
            assert np.array_equal(idx, plain)


def test_a_capped_class_gives_its_share_to_the_classes_with_room() -> None:
    labels = np.repeat(np.arange(6), [1, 2, 11, 11, 11, 11])
    plain = data.stratified_sample(labels, 14, seed=0)
    assert np.bincount(labels[plain]).tolist() == [1, 1, 3, 3, 3, 3]  # a's only image sampled
    kept = data.stratified_sample(labels, 14, seed=0, keep=1)
    assert np.bincount(labels[kept], minlength=6).tolist() == [0, 1, 4, 3, 3, 3]


def test_split_errors_name_their_real_cause(tmp_path: Path) -> None:
    singles = labelled([1, 1, 1])
    with pytest.raises(data.DataError, match="every class has a single image, which training needs"):
        data.make_splits(singles, cfg(validation_fraction=0.5), seed=0)
    with pytest.raises(data.DataError, match="max_train_samples: 2 is fewer than the 3 classes.*at least 3"):
        data.make_splits(labelled([5, 5, 5]), cfg(max_train_samples=2), seed=0)


def test_empty_class_reason_names_unreadable_files_or_absent_classes() -> None:
    s = data.make_splits(labelled([6, 6, 6]), cfg(validation_fraction=0.2), seed=0)
    kept = np.asarray(s.train["label"][:])
    assert data.empty_class_reason(s, kept) is None
    reason = data.empty_class_reason(s, kept[kept != 1])
    assert reason is not None
    assert reason.startswith("data: every training image of class(es) c1 (5 images) is unreadable")
    assert "data_report.json" in reason and "\n" not in reason
    # A train piece without any image of a class (not one make_splits gives) says that instead.
    s.train = s.train.filter(lambda row: row["label"] != 2)
    kept = np.asarray(s.train["label"][:])
    assert data.empty_class_reason(s, kept) == "data: class(es) c2 have no training images; add images or remove the class"
