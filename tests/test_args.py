"""TrainingArguments from a recipe: machine-dependent defaults (precision)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from finetune.args import device_defaults, precision, training_arguments
from finetune.recipe import recipe_from_dict


def recipe(training: dict | None = None, **data) -> object:
    return recipe_from_dict({
        "description": "d", "model": {"name_or_path": "some/model"}, "data": {"dataset": "x", **data},
        "output_dir": "out", "training": training or {},
    })


def _gpu(monkeypatch, capability: tuple[int, int], bf16: bool) -> None:
    """Pretend to run on a CUDA GPU of this compute capability."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)


def test_cpu_runs_in_fp32(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    defaults = device_defaults({})
    assert defaults["use_cpu"] and not defaults["tf32"] and defaults["dataloader_num_workers"] == 0
    assert "bf16" not in defaults and "fp16" not in defaults
    args = training_arguments(recipe({"use_cpu": True}))
    assert not args.bf16 and not args.fp16 and precision(args) == "fp32"


def test_ampere_gpu_defaults_to_bf16_and_tf32(monkeypatch) -> None:
    _gpu(monkeypatch, (8, 0), bf16=True)
    defaults = device_defaults({})
    assert defaults["bf16"] and not defaults["fp16"] and defaults["tf32"] and not defaults["use_cpu"]
    assert precision(SimpleNamespace(**defaults)) == "bf16 mixed precision, TF32 matmuls"


def test_gpu_without_bf16_defaults_to_fp16(monkeypatch) -> None:
    """A T4 (Colab) emulates bf16 slowly: fp16 with the Trainer's grad scaler instead."""
    _gpu(monkeypatch, (7, 5), bf16=False)
    defaults = device_defaults({})
    assert defaults["fp16"] and not defaults["bf16"] and not defaults["tf32"]
    # TrainingArguments sets up the (pretend) GPU when built, so the log line is checked alone.
    assert precision(SimpleNamespace(**defaults)) == "fp16 mixed precision (the Trainer's grad scaler)"


@pytest.mark.parametrize("user", [{"bf16": True}, {"fp16": False}, {"use_cpu": True}])
def test_the_recipe_decides_precision_when_it_names_it(user: dict, monkeypatch) -> None:
    _gpu(monkeypatch, (7, 5), bf16=False)
    defaults = device_defaults(user)
    assert "fp16" not in defaults and "bf16" not in defaults
