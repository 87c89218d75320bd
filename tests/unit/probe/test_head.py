"""head.py: the L-BFGS head of the cached-feature probe, its fit and its progress."""

from __future__ import annotations

import numpy as np
import pytest
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


# ------------------------------------------------------------------------- multi-label


def _multi_label_features(n: int, seed: int, noise: float = 0.8):
    """Features whose 3 labels each depend on a direction of their own (an image may have none or all)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 32)).astype(np.float32)
    y = np.stack([x[:, 0] + rng.normal(scale=noise, size=n) > 0.3, x[:, 1] - x[:, 2] + rng.normal(scale=noise, size=n) > 0,
                  x[:, 3] + rng.normal(scale=noise, size=n) > 1.0], axis=1).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


def test_multi_label_lbfgs_head_is_one_vs_rest_logistic_regression() -> None:
    """Each class's row is its own binary logistic regression: scikit-learn's one-vs-rest optimum."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    x, y = _multi_label_features(150, 0)
    l2 = 0.02
    fit = probe.fit_logistic(x, y, 3, l2, max_iter=500, multi_label=True)
    ref = OneVsRestClassifier(LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=10_000)).fit(x.numpy(), y.numpy())
    ours = torch.sigmoid(x @ fit.weight.t() + fit.bias).numpy()
    assert np.abs(ours - ref.predict_proba(x.numpy())).max() < 1e-3
    logits = x @ fit.weight.t() + fit.bias
    assert fit.train_loss == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y)), rel=1e-5)


def test_mean_average_precision_averages_sklearns_ap_over_classes_with_a_positive() -> None:
    from sklearn.metrics import average_precision_score

    from finetune.probe.logistic import mean_average_precision

    rng = np.random.default_rng(1)
    y = (rng.random((20, 4)) > 0.6).astype(np.float32)
    y[:, 2] = 0  # a class without a positive image: left out, not scored 0
    s = rng.random((20, 4))
    expected = np.mean([average_precision_score(y[:, c], s[:, c]) for c in (0, 1, 3)])
    assert mean_average_precision(y, s) == pytest.approx(expected)
    assert mean_average_precision(np.zeros((5, 3)), rng.random((5, 3))) is None


def _probe_trainer(tiny_vit, tmp_path, train, validation, **keys):
    from finetune.data.multi_label import PROBLEM_TYPE
    from finetune.probe.features import FeatureDataset
    from finetune.recipe import recipe_from_dict
    from finetune.training.arguments import training_arguments
    from tests.helpers.features import batch_transform, load_probe_model

    loaded, processor = load_probe_model(tiny_vit)
    loaded.model.config.problem_type = PROBLEM_TYPE
    recipe = recipe_from_dict({"description": "d", "model": {"name_or_path": str(tiny_vit)}, "data": {"dataset": "x"},
                               "output_dir": str(tmp_path / "o"),
                               "training": {"use_cpu": True, "eval_strategy": "no", "report_to": [], **keys}})
    return probe.FeatureProbeTrainer(
        model=loaded.model, args=training_arguments(recipe), train_dataset=FeatureDataset(*train),
        eval_dataset=FeatureDataset(*validation) if validation else None, batch_transform=batch_transform(processor),
        solver="lbfgs", l2=[3.0, 0.3, 0.01], max_iter=300,
    )


def test_multi_label_lbfgs_probe_chooses_lambda_by_validation_map(tiny_vit, tmp_path) -> None:
    from finetune.probe.logistic import fit_logistic, mean_average_precision

    train, validation = _multi_label_features(80, 2, noise=1.5), _multi_label_features(60, 3, noise=1.5)
    trainer = _probe_trainer(tiny_vit, tmp_path, train, validation)
    result = trainer.train()
    tried = [e for e in trainer.state.log_history if "probe_l2" in e and "validation_map" in e]
    assert [e["probe_l2"] for e in tried] == [3.0, 0.3, 0.01] and "validation_accuracy" not in tried[0]
    scores, init = {}, None
    for l2 in (3.0, 0.3, 0.01):  # the same path, warm-started, fitted here by hand
        fit = fit_logistic(*train, 3, l2, 300, init, multi_label=True)
        init = (fit.weight, fit.bias)
        scores[l2] = mean_average_precision(validation[1].numpy(), (validation[0] @ fit.weight.t() + fit.bias).numpy())
    assert [e["validation_map"] for e in tried] == pytest.approx([scores[v] for v in (3.0, 0.3, 0.01)], abs=1e-4)
    assert result.metrics["probe_l2"] == max(scores, key=scores.get) and result.metrics["probe_regression"] == "one-vs-rest"
    assert result.metrics["probe_validation_map"] == pytest.approx(max(scores.values()), abs=1e-4)


def test_multi_label_lbfgs_ties_on_map_go_to_the_lower_validation_loss(tiny_vit, tmp_path) -> None:
    y = torch.from_numpy((np.random.default_rng(4).random((120, 3)) > 0.5).astype(np.float32))
    x = torch.zeros(120, 32)
    x[:, :3] = 2 * y - 1  # each label its own feature: every λ ranks the validation images perfectly
    train, validation = (x[:80], y[:80]), (x[80:], y[80:])
    trainer = _probe_trainer(tiny_vit, tmp_path, train, validation)
    result = trainer.train()
    tried = [e for e in trainer.state.log_history if "validation_map" in e]
    best = max(e["validation_map"] for e in tried)
    tied = [e for e in tried if e["validation_map"] == best]
    assert len(tied) > 1
    assert result.metrics["probe_l2"] == min(tied, key=lambda e: e["validation_loss"])["probe_l2"]


def test_trainer_probe_of_a_multi_label_model_trains_on_the_smoothed_multi_label_loss(tiny_vit, tmp_path) -> None:
    """The Trainer solver: HeadModel's loss is training.losses' multi-label loss (smoothed in
    training, plain in evaluation), not the Trainer's softmax label smoother."""
    from finetune.probe.features import FeatureDataset
    from finetune.training.losses import multi_label_loss

    train = _multi_label_features(40, 5)
    trainer = _probe_trainer(tiny_vit, tmp_path, train, train, label_smoothing_factor=0.2, num_train_epochs=2,
                             per_device_train_batch_size=8, learning_rate=0.05)
    trainer.solver = "trainer"
    assert trainer.label_smoother is None and trainer.model.smoothing == 0.2
    head = trainer.model
    inputs = {"features": train[0][:8], "labels": train[1][:8]}
    head.train()
    logits = head(features=inputs["features"]).logits.detach()
    assert torch.allclose(trainer.compute_loss(head, dict(inputs)), multi_label_loss(logits, train[1][:8], smoothing=0.2))
    head.eval()
    assert torch.allclose(trainer.compute_loss(head, dict(inputs)), multi_label_loss(logits, train[1][:8]))
    before = float(trainer.evaluate(FeatureDataset(*train))["eval_loss"])
    trainer.train()
    assert float(trainer.evaluate(FeatureDataset(*train))["eval_loss"]) < before
