"""Nearest neighbours among cached features by cosine similarity, searched in blocks so that memory stays bounded.

The similarity of two images is the cosine of two vectors of theirs (the frozen backbone's
features, or thumbnails of their pixels). Every row is normalised once, and each block of
queries is one matrix product against all keys followed by a top-k: no N×N matrix is ever
held, only :data:`BLOCK_BYTES` of similarities at a time. The search is exact: a matrix
product runs near the CPU's peak, fast enough for every pair of tens of thousands of images
on two cores (bench/README.md has the figures), so no approximate index is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

#: The most bytes of similarities one block may hold.
BLOCK_BYTES = 256 * 2**20


def normalise(features: torch.Tensor) -> torch.Tensor:
    """Float32 rows of unit length (an all-zero row stays zero: similar to nothing)."""
    x = torch.as_tensor(features).float()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    same: bool = False,
    on_block: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` keys most similar to every query, most similar first: (similarities,
    indices), each (number of queries, k'), k' = ``k`` or fewer when there are fewer keys.
    Both inputs must be normalised (:func:`normalise`). ``same``: the queries are the keys,
    and a row is not its own neighbour. ``on_block`` is told how many queries each block
    covered (for a progress bar)."""
    n, m = len(queries), len(keys)
    k = max(0, min(k, m - (1 if same else 0)))
    sims = torch.empty(n, k)
    index = torch.empty(n, k, dtype=torch.long)
    if k == 0 or n == 0:
        return sims, index
    rows = max(1, min(n, BLOCK_BYTES // (4 * m)))
    keys_t = keys.t().contiguous()
    for start in range(0, n, rows):
        end = min(n, start + rows)
        block = queries[start:end] @ keys_t
        if same:
            # A row's similarity with itself is 1: never its own neighbour.
            block[torch.arange(end - start), torch.arange(start, end)] = -float("inf")
        values, found = block.topk(k, dim=1)
        sims[start:end], index[start:end] = values, found
        if on_block is not None:
            on_block(end - start)
    return sims, index


@dataclass
class Leaks:
    """Eval images that duplicate a training image: for every eval row, its most similar
    training row and their similarity, and which rows count as leaked."""

    nearest_train: np.ndarray  # per eval row: the most similar training row (-1: no training rows)
    similarity: np.ndarray  # per eval row: that similarity, the larger of the views' (1.0 for an exact copy)
    view: np.ndarray  # per eval row: the index of the view that gave it
    exact: np.ndarray  # per eval row: its decoded pixels equal a training image's
    leaked: np.ndarray  # per eval row: exact, or similarity >= threshold
    threshold: float
    per_view: list[np.ndarray]  # per view: each eval row's similarity to its nearest training row

    @property
    def rows(self) -> np.ndarray:
        """The leaked eval rows, in order."""
        return np.flatnonzero(self.leaked)


def most_similar(
    queries: list[torch.Tensor], keys: list[torch.Tensor], on_block: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """For every query row, the key row most similar in any of the views (each view a pair
    of normalised matrices, ``queries[v]`` against ``keys[v]``): (that row, the similarity,
    the view's index, and per view every query's best similarity). (-1, -inf, -1) where
    there are no keys."""
    n = len(queries[0]) if queries else 0
    best = np.full(n, -np.inf)
    partner = np.full(n, -1, dtype=np.int64)
    view = np.full(n, -1, dtype=np.int64)
    per_view = []
    for v, (q, k) in enumerate(zip(queries, keys)):
        sims, index = nearest(q, k, 1, on_block=on_block)
        if sims.shape[1] == 0:
            per_view.append(np.full(n, -np.inf))
            continue
        s, i = sims[:, 0].double().numpy(), index[:, 0].numpy()
        per_view.append(s)
        better = s > best
        best[better], partner[better], view[better] = s[better], i[better], v
    return partner, best, view, per_view


def find_leaks(
    train_views: list[torch.Tensor],
    train_hashes: list[bytes],
    eval_views: list[torch.Tensor],
    eval_hashes: list[bytes],
    threshold: float,
    on_block: Callable[[int], None] | None = None,
) -> Leaks:
    """Which eval rows duplicate a training row: the same decoded pixels (the hashes), or a
    cosine similarity of at least ``threshold`` in one of the views (normalised rows: the
    thumbnails, the backbone's features). An exact copy's partner is the first training row
    with the same pixels, its similarity 1.0."""
    nearest_train, similarity, view, per_view = most_similar(eval_views, train_views, on_block)
    first_with: dict[bytes, int] = {}
    for i, digest in enumerate(train_hashes):
        first_with.setdefault(digest, i)
    exact = np.zeros(len(eval_hashes), dtype=bool)
    for i, digest in enumerate(eval_hashes):
        j = first_with.get(digest)
        if j is not None:
            exact[i], nearest_train[i], similarity[i] = True, j, 1.0
    leaked = exact | (similarity >= threshold)
    return Leaks(nearest_train, similarity, view, exact, leaked, float(threshold), per_view)
