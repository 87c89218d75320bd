"""Seeded samples of multi-label data: the validation piece by iterative stratification (Sechidis et al. 2011), and subsets that keep every class.

Both take the labels as (image, class) pairs (:func:`finetune.data.columns.label_pairs`) and
are pure functions of them and the seed, so every process and every re-run draws the same.

The validation piece follows Sechidis, Tsoumakas & Vlahavas (2011), "On the stratification
of multi-label data", Algorithm 1, for two pieces, with three changes so that a small data set
keeps what training and threshold tuning need:

1. Coverage first: before the main pass, for each class with at least 2 images that the
   piece lacks, rarest class first, one of its images goes to the validation piece (the one
   that brings the most classes the piece lacks, then the one with the fewest classes, then
   in seeded order), while the piece has room. Plain iterative stratification gives a class
   of 2 images 0.2 expected validation images at a fraction of 0.1, so it would miss it.
2. Training keeps every class: an image goes to the validation piece only if each of its
   classes keeps another image outside it.
3. Exact size: a piece that has its share takes no more images (the other piece takes them),
   so the validation piece has exactly the requested size unless rule 2 forbids it.

The main pass is the paper's: take the class with the fewest images not yet placed (ties: the
lower class index), place each of its images (in seeded order) in the piece that wants most
images of that class, ties to the piece that wants most images, then by a seeded draw; images
without a class come last, to the piece that wants most images.
"""

from __future__ import annotations

import numpy as np

TRAIN, VALIDATION = 0, 1


def _groups(rows, classes, n_images: int, num_classes: int, rng: np.random.Generator) -> tuple[list, list]:
    """Each image's classes, and each class's images in a seeded order, from the (image, class)
    pairs (a pair given twice counts once)."""
    pairs = np.unique(np.asarray(rows, np.int64) * num_classes + np.asarray(classes, np.int64))
    rows, classes = pairs // num_classes, pairs % num_classes  # sorted by image, then class
    of_image = np.split(classes, np.searchsorted(rows, np.arange(1, n_images)))
    order = np.argsort(classes, kind="stable")
    grouped = np.split(rows[order], np.searchsorted(classes[order], np.arange(1, num_classes)))
    of_class = [images[rng.permutation(len(images))] for images in grouped]
    return of_image, of_class


def validation_piece(
    rows: np.ndarray, classes: np.ndarray, n_images: int, num_classes: int, n_val: int, seed: int, keep: bool = True
) -> np.ndarray:
    """The sorted indices of a validation piece of ``n_val`` of ``n_images`` images, drawn by
    iterative stratification with the module's three changes; ``keep`` false drops the rule
    that training keeps every class (a piece drawn from images training does not use)."""
    rng = np.random.default_rng(seed)
    n_val = int(min(max(n_val, 0), n_images))
    if n_val == 0:
        return np.zeros(0, np.int64)
    of_image, of_class = _groups(rows, classes, n_images, num_classes, rng)
    sizes = np.array([len(images) for images in of_class], dtype=np.int64)
    fraction = n_val / n_images
    # Wanted images per piece, overall and per class (the paper's c_j and c_j^l).
    wanted = np.array([n_images - n_val, n_val], dtype=np.float64)
    wanted_of = np.stack([sizes * (1 - fraction), sizes * fraction]).astype(np.float64)
    piece = np.full(n_images, -1, dtype=np.int64)
    outside = sizes.copy()  # per class: its images not in the validation piece
    unplaced = sizes.copy()  # per class: its images not placed yet
    tiebreak = rng.random(n_images)

    def place(image: int, where: int) -> None:
        piece[image] = where
        mine = of_image[image]
        wanted[where] -= 1
        wanted_of[where, mine] -= 1
        unplaced[mine] -= 1
        if where == VALIDATION:
            outside[mine] -= 1

    def may_validate(image: int) -> bool:
        return wanted[VALIDATION] >= 1 and (not keep or bool((outside[of_image[image]] >= 2).all()))

    for c in np.argsort(sizes, kind="stable"):
        if sizes[c] < 2 or wanted[VALIDATION] < 1:
            continue
        if sizes[c] - outside[c] > 0:
            continue  # a validation image of an earlier class has it already
        free = [int(i) for i in of_class[c] if piece[i] < 0 and may_validate(int(i))]
        if free:
            # The image that brings the most classes the piece lacks, then the one with the fewest classes.
            lacking = lambda i: int((sizes[of_image[i]] - outside[of_image[i]] == 0).sum())  # noqa: E731
            place(min(free, key=lambda i: (-lacking(i), len(of_image[i]))), VALIDATION)

    while (unplaced > 0).any():
        c = int(np.argmin(np.where(unplaced > 0, unplaced, np.iinfo(np.int64).max)))
        for image in of_class[c]:
            image = int(image)
            if piece[image] >= 0:
                continue
            if not may_validate(image):
                place(image, TRAIN)
            elif wanted[TRAIN] < 1:
                place(image, VALIDATION)
            else:
                best = wanted_of[:, c]
                if best[0] != best[1]:
                    place(image, int(np.argmax(best)))
                elif wanted[0] != wanted[1]:
                    place(image, int(np.argmax(wanted)))
                else:
                    place(image, VALIDATION if tiebreak[image] < fraction else TRAIN)
    for image in np.flatnonzero(piece < 0):  # images without a class
        image = int(image)
        if wanted[VALIDATION] >= 1 and (wanted[TRAIN] < 1 or wanted[VALIDATION] > wanted[TRAIN] or (
            wanted[VALIDATION] == wanted[TRAIN] and tiebreak[image] < fraction
        )):
            place(image, VALIDATION)
        else:
            place(image, TRAIN)
    return np.flatnonzero(piece == VALIDATION).astype(np.int64)


def covering_sample(rows: np.ndarray, classes: np.ndarray, n_images: int, num_classes: int, n: int, seed: int) -> np.ndarray:
    """The sorted indices of a seeded sample of ``n`` of ``n_images`` images that holds every
    class it can: first, rarest class first, one image of each class the sample lacks (seeded
    among its images), then a seeded draw of the rest."""
    rng = np.random.default_rng(seed)
    n = int(min(max(n, 0), n_images))
    of_image, of_class = _groups(rows, classes, n_images, num_classes, rng)
    sizes = np.array([len(images) for images in of_class], dtype=np.int64)
    chosen = np.zeros(n_images, dtype=bool)
    held = np.zeros(num_classes, dtype=bool)
    for c in np.argsort(sizes, kind="stable"):
        if chosen.sum() >= n:
            break
        if sizes[c] == 0 or held[c]:
            continue
        image = int(of_class[c][0])
        chosen[image] = True
        held[of_image[image]] = True
    rest = np.flatnonzero(~chosen)
    more = n - int(chosen.sum())
    if more > 0:
        chosen[rest[rng.permutation(len(rest))[:more]]] = True
    return np.flatnonzero(chosen).astype(np.int64)
