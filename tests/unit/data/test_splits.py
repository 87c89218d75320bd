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


# ------------------------------------------------------------------------------ multi-label


def sets(label_sets: list[list[str]], with_row: bool = True):
    """A train split (and a test split of its first 4 images) of text labels joined by ';'."""
    from datasets import Dataset, DatasetDict

    columns = {"image": ["a.png"] * len(label_sets), "labels": [";".join(s) for s in label_sets]}
    if with_row:
        columns["row"] = list(range(len(label_sets)))
    train = Dataset.from_dict(columns)
    return DatasetDict(train=train, test=train.select(range(4)))


def many_sets(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    names = [f"k{i:02d}" for i in range(12)]
    out = [[n_] for n_ in names]  # every class has an image
    weights = 1 / np.arange(1, 13) ** 1.3
    for _ in range(n - len(names)):
        out.append(sorted(rng.choice(names, size=int(rng.integers(0, 4)), replace=False, p=weights / weights.sum())))
    return out


def classes_in(split) -> set[int]:
    return {c for v in split["labels"][:] for c in v}


def test_single_label_splits_are_the_stratified_samples_they_always_were() -> None:
    raw = labelled([30, 20, 11])
    raw["train"] = raw["train"].add_column("row", list(range(61)))
    s = data.make_splits(raw, cfg(validation_fraction=0.2), seed=7)
    labels = np.asarray(raw["train"]["label"][:])
    expected = data.stratified_sample(labels, 12, 7 + 1, keep=1)
    assert not s.multi_label
    assert s.validation["row"][:] == expected.tolist()
    assert s.train["row"][:] == np.setdiff1d(np.arange(61), expected).tolist()
    assert s.train.features["label"] == raw["train"].features["label"]


def test_the_multi_label_validation_piece_holds_every_class_of_two_or_more_images() -> None:
    label_sets = many_sets(120)
    s = data.make_splits(sets(label_sets), cfg(validation_fraction=0.2), seed=3)
    assert s.multi_label and len(s.validation) == 24 and len(s.train) == 96
    assert set(s.train["row"][:]).isdisjoint(s.validation["row"][:])
    sizes = {}
    for ls in label_sets:
        for name in ls:
            sizes[name] = sizes.get(name, 0) + 1
    twice = {s.class_names.index(k) for k, v in sizes.items() if v >= 2}
    assert twice <= classes_in(s.validation)
    assert classes_in(s.train) == set(range(len(s.class_names)))
    again = data.make_splits(sets(label_sets), cfg(validation_fraction=0.2), seed=3)
    assert again.validation["row"][:] == s.validation["row"][:]
    assert s.eval_name == "test" and s.eval.features["labels"] == s.train.features["labels"]


def test_a_class_missing_from_the_validation_piece_is_noted() -> None:
    label_sets = [["a"], ["a"], ["b"], ["b"], ["c"], ["c"], ["d"], ["a"], ["b"], ["c"]]
    s = data.make_splits(sets(label_sets), cfg(validation_fraction=0.2, task="multi_label"), seed=0)
    assert s.multi_label and len(s.validation) == 2
    missing = [n for i, n in enumerate(s.class_names) if i not in classes_in(s.validation)]
    assert "d" in missing  # a single image: it must stay in training
    note = next(n for n in s.notes if "have no validation images" in n)
    assert all(name in note for name in missing) and "decision thresholds stay at the default" in note


def test_max_train_and_eval_samples_keep_every_class() -> None:
    label_sets = many_sets(200, seed=1)
    s = data.make_splits(sets(label_sets), cfg(max_train_samples=20, max_eval_samples=3, validation_fraction=0.25), seed=0)
    assert len(s.train) == 20 and classes_in(s.train) == set(range(12))
    assert len(s.validation) == 5 and set(s.train["row"][:]).isdisjoint(s.validation["row"][:])
    assert len(s.eval) == 3 and "seeded subset of 3 keeping every class it can" in s.eval_name
    with pytest.raises(data.DataError, match="data.max_train_samples: 5 images cannot hold every class"):
        data.make_splits(sets([[f"k{i}"] for i in range(8)] * 2), cfg(max_train_samples=5, task="multi_label"), seed=0)


def test_multi_label_data_refuses_k_shot_and_the_balanced_sampler_in_one_line() -> None:
    raw = sets(many_sets(40))
    for keys, needle in (({"samples_per_class": 2}, "'data.samples_per_class' draws k images"),
                         ({"sampler": "balanced"}, "'data.sampler' 'balanced' draws a class")):
        with pytest.raises(data.DataError) as err:
            data.make_splits(raw, cfg(**keys), seed=0)
        message = str(err.value)
        assert message.startswith("data: 'labels' holds several classes per image (multi-label data), and ") and needle in message
        assert len(message.splitlines()) == 1


def test_a_validation_piece_that_training_cannot_spare_is_an_error() -> None:
    with pytest.raises(data.DataError, match="cannot be set aside: each image is the only one of one of its classes"):
        data.make_splits(sets([["a"], ["b"], ["c"], ["d"], ["e"]]), cfg(validation_fraction=0.4, task="multi_label"), seed=0)


def test_empty_class_reason_counts_each_class_of_a_multi_label_image() -> None:
    s = data.make_splits(sets([["a", "b"], ["a"], ["b", "c"], ["c"], ["a", "c"], ["b"]]), cfg(validation_fraction=0), seed=0)
    _, classes = data.label_pairs(s.train, "labels")
    assert data.empty_class_reason(s, classes) is None
    reason = data.empty_class_reason(s, classes[classes != 2])
    assert reason is not None and "every training image of class(es) c (3 images) is unreadable" in reason
