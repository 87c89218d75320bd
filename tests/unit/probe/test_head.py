"""head.py: the L-BFGS head of the cached-feature probe, its fit and its progress."""

from __future__ import annotations

import numpy as np
import torch

from finetune.probe import head as probe


def test_lbfgs_fit_reports_its_iterations_as_it_goes() -> None:
    x = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    seen: list[int] = []
    fit = probe.fit_logistic(x, y, 2, 0.01, max_iter=50, on_iteration=seen.append)
    assert seen[0] == 0 and seen == sorted(seen) and seen[-1] == fit.iterations > 0


def test_lbfgs_head_is_the_logistic_regression_optimum() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.8, size=120) > 0).astype(np.int64) + (x[:, 2] > 1)
    l2 = 0.05
    fit = probe.fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, l2, max_iter=500)
    # scikit-learn minimises C·Σ CE + ½‖W‖², the same optimum as mean CE + λ/2‖W‖² when C = 1/(λ·n).
    ref = LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=10_000).fit(x, y)
    ours = torch.softmax(torch.from_numpy(x) @ fit.weight.t() + fit.bias, -1).numpy()
    assert np.abs(ours - ref.predict_proba(x)).max() < 1e-3
    assert fit.iterations > 0 and 0 < fit.train_loss < np.log(3)
