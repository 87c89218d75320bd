"""ema.py: the EMA of the weights: its update and warmup, its swap in for evaluation, and its file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.training.ema import WeightEma


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _move(model: torch.nn.Module, seed: int) -> None:
    """What an optimizer step and a forward pass do: new weights and batch-norm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    model.train()
    model(torch.randn(5, 3, generator=g))


def test_the_average_starts_at_the_first_step_then_decays() -> None:
    model = _net()
    ema = WeightEma(model, decay=0.9, warmup=False)
    _move(model, 1)
    ema.update(model, step=1)
    first = _state(model)
    assert all(torch.equal(ema.average.module.state_dict()[k], first[k]) for k in first)
    _move(model, 2)
    ema.update(model, step=2)
    for k, v in ema.average.module.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * first[k] + 0.1 * model.state_dict()[k], atol=1e-6), k
        else:  # batch-norm's counter is copied
            assert torch.equal(v, model.state_dict()[k])


def test_warmup_ramps_the_decay_up_to_its_cap() -> None:
    ema = WeightEma(_net(), decay=0.999, warmup=True)
    assert ema.decay_at(1) == 0.0
    assert ema.decay_at(100) == pytest.approx(1 - 100 ** (-2 / 3))
    assert 0.95 < ema.decay_at(100) < ema.decay_at(1000) < 0.999 == WeightEma(_net(), 0.999).decay_at(10**6)
    assert WeightEma(_net(), decay=0.999, warmup=False).decay_at(100) == 0.999


def test_swapped_in_evaluates_the_average_and_restores_the_weights_bit_for_bit() -> None:
    model = _net()
    ema = WeightEma(model, decay=0.5, warmup=False)
    for step in range(1, 4):
        _move(model, step)
        ema.update(model, step)
    weights = _state(model)
    with ema.swapped_in(model):
        inside = _state(model)
    assert all(torch.equal(inside[k], v) for k, v in ema.average.module.state_dict().items())
    assert not all(torch.equal(inside[k], weights[k]) for k in weights)
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)
    ema.apply(model)
    assert ema.applied and all(torch.equal(model.state_dict()[k], inside[k]) for k in inside)


def test_save_and_load_give_the_same_bits(tmp_path: Path) -> None:
    model = _net()
    ema = WeightEma(model, decay=0.7, warmup=False)
    for step in range(1, 4):
        _move(model, step)
        ema.update(model, step)
    ema.save(tmp_path, step=3)
    other = WeightEma(_net(), decay=0.7, warmup=False)
    assert other.load(tmp_path)
    for k, v in ema.average.module.state_dict().items():
        assert torch.equal(other.average.module.state_dict()[k], v), k
    assert not WeightEma(_net(), 0.7).load(tmp_path / "missing")  # a warning, and the weights as they are
