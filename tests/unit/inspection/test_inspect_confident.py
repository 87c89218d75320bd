"""Confident learning's maths on hand-made probabilities, and the out-of-fold probe on separable features with known flipped labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune.inspection import confident as cl


def hand_made() -> tuple[np.ndarray, np.ndarray]:
    """Six images, three classes: rows 0-1 labelled 0, 2-3 labelled 1, 4-5 labelled 2.
    Row 1 looks like class 1 and row 5 like class 0: the two wrong labels."""
    probs = np.array([
        [0.8, 0.1, 0.1],
        [0.1, 0.8, 0.1],  # labelled 0, confidently 1
        [0.2, 0.7, 0.1],
        [0.1, 0.6, 0.3],
        [0.1, 0.2, 0.7],
        [0.7, 0.1, 0.2],  # labelled 2, confidently 0
    ])
    return probs, np.array([0, 0, 1, 1, 2, 2])


def test_thresholds_are_the_mean_self_confidence_of_each_class() -> None:
    probs, labels = hand_made()
    t = cl.class_thresholds(probs, labels, 3)
    assert t == pytest.approx([(0.8 + 0.1) / 2, (0.7 + 0.6) / 2, (0.7 + 0.2) / 2])
    # A class without images: nothing is confidently in it.
    assert cl.class_thresholds(probs, np.zeros(6, dtype=int), 3)[1] == np.inf


def test_the_confident_joint_counts_images_by_the_most_likely_class_above_its_threshold() -> None:
    probs, labels = hand_made()
    t = cl.class_thresholds(probs, labels, 3)  # 0.45, 0.65, 0.45
    joint = cl.confident_joint(probs, labels, t)
    # Row 3 (labelled 1, p(1) = 0.6 < 0.65) reaches no threshold: not counted.
    assert joint.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert joint.sum() == 5
    # With two classes above their thresholds, the more likely one counts.
    two = np.array([[0.5, 0.5 - 1e-3, 1e-3]])
    assert cl.confident_joint(two, np.array([2]), np.array([0.4, 0.4, 0.9])).tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]


def test_the_estimated_joint_keeps_each_classs_share_and_sums_to_one() -> None:
    probs, labels = hand_made()
    q = cl.estimate_joint(cl.confident_joint(probs, labels, cl.class_thresholds(probs, labels, 3)), labels)
    assert q.sum() == pytest.approx(1.0)
    assert q.sum(axis=1) == pytest.approx(np.bincount(labels) / len(labels))
    assert q[0, 1] == pytest.approx(q[0, 0])  # one of class 0's two counted images is confidently class 1


def test_the_wrong_labels_are_flagged_and_ranked_first() -> None:
    probs, labels = hand_made()
    issues = cl.find_label_issues(probs, labels)
    assert issues.estimated_errors == 2
    assert np.flatnonzero(issues.flagged).tolist() == [1, 5]
    # Ranked by p(given) / t_given: row 1 scores 0.1 / 0.45, row 5 0.2 / 0.45.
    assert issues.flagged_ranked.tolist() == [1, 5]
    assert issues.ranked[:2].tolist() == [1, 5]
    assert issues.suggested[[1, 5]].tolist() == [1, 0]
    assert issues.score[1] == pytest.approx(0.1 / 0.45)


def test_an_image_whose_most_likely_class_is_its_label_is_never_flagged() -> None:
    probs = np.array([[0.4, 0.35, 0.25], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    labels = np.array([0, 0, 1, 2])
    issues = cl.find_label_issues(probs, labels)
    assert not issues.flagged[0]  # least self-confident, but its label is its most likely class
    assert issues.flagged.sum() == 0


def test_thresholds_given_from_elsewhere_are_used() -> None:
    probs, labels = hand_made()
    # Thresholds so high that nothing is confidently anything: nothing flagged.
    issues = cl.find_label_issues(probs, labels, thresholds=np.array([0.99, 0.99, 0.99]))
    assert issues.joint.sum() == 0 and issues.flagged.sum() == 0


def test_folds_are_stratified_seeded_and_cover_every_image() -> None:
    labels = np.repeat(np.arange(4), 25)
    fold = cl.folds_of(labels, 5, seed=3)
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4]
    for k in range(5):
        assert np.bincount(labels[fold == k], minlength=4).tolist() == [5, 5, 5, 5]
    assert np.array_equal(fold, cl.folds_of(labels, 5, seed=3))
    assert not np.array_equal(fold, cl.folds_of(labels, 5, seed=4))


def clusters(n_per_class: int = 60, classes: int = 4, flips: int = 12, seed: int = 0):
    """Gaussian clusters (separable) with ``flips`` labels changed to another class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, 16)) * 3
    truth = np.repeat(np.arange(classes), n_per_class)
    x = centres[truth] + rng.normal(0, 1, (len(truth), 16))
    flipped = rng.choice(len(truth), flips, replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, classes, flips)) % classes
    return torch.from_numpy(x).float(), given, set(flipped.tolist())


def test_the_out_of_fold_probe_finds_the_flipped_labels() -> None:
    x, given, flipped = clusters()
    oof = cl.out_of_fold(x, given, 4, folds=5, seed=0)
    assert oof.probabilities.shape == (len(given), 4)
    assert np.allclose(oof.probabilities.sum(1), 1)
    # λ is the one with the lowest out-of-fold cross-entropy of those tried.
    assert oof.l2 == min(oof.cross_entropy, key=oof.cross_entropy.get)
    issues = cl.find_label_issues(oof.probabilities, given)
    found = set(np.flatnonzero(issues.flagged).tolist())
    assert len(found & flipped) >= 0.9 * len(flipped)
    # Clean images are not flagged wholesale.
    assert len(found - flipped) <= 0.05 * (len(given) - len(flipped))
    top = set(issues.flagged_ranked[: len(flipped)].tolist())
    assert len(top & flipped) >= 0.9 * len(flipped)


def test_no_image_is_judged_by_a_probe_that_saw_it() -> None:
    """An image's out-of-fold probabilities are those of a probe fitted on the other folds:
    refitting that probe by hand gives them again, and a probe that saw the image would not."""
    x, given, _ = clusters(n_per_class=30, flips=6, seed=1)
    oof = cl.out_of_fold(x, given, 4, folds=3, seed=0, l2_grid=(0.1,))
    held = np.flatnonzero(oof.fold == 0)
    fit = cl.fit_all(x[oof.fold != 0], given[oof.fold != 0], 4, 0.1)
    assert np.allclose(cl.probabilities(fit, x[held]), oof.probabilities[held], atol=1e-4)
    seen = cl.fit_all(x, given, 4, 0.1)
    assert not np.allclose(cl.probabilities(seen, x[held]), oof.probabilities[held], atol=1e-4)


def test_the_walk_over_l2_stops_once_the_cross_entropy_rises() -> None:
    x, given, _ = clusters(seed=2)
    oof = cl.out_of_fold(x, given, 4, folds=3, seed=0)
    tried = list(oof.cross_entropy)
    assert tried == sorted(tried, reverse=True)  # strongest first
    if len(tried) < len(cl.L2_GRID):
        assert oof.cross_entropy[tried[-1]] > oof.cross_entropy[oof.l2]


def test_a_large_set_walks_the_l2_path_on_one_fold(monkeypatch) -> None:
    x, given, flipped = clusters(seed=3)
    monkeypatch.setattr(cl, "PATH_ON_ONE_FOLD", 100)  # 240 images: "large"
    fits: list[tuple[float, int]] = []
    oof = cl.out_of_fold(x, given, 4, folds=4, seed=0, on_fit=lambda l2, k: fits.append((l2, k)))
    walked = [f for f in fits if f[1] == 0]
    assert [l2 for l2, _ in walked] == list(oof.cross_entropy)  # the path, on fold 0 alone
    assert sorted(f for f in fits if f[1] != 0) == [(oof.l2, 1), (oof.l2, 2), (oof.l2, 3)]  # the others once, at the λ chosen
    assert np.allclose(oof.probabilities.sum(1), 1)
    found = set(np.flatnonzero(cl.find_label_issues(oof.probabilities, given).flagged).tolist())
    assert len(found & flipped) >= 0.9 * len(flipped)
