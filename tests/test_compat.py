"""Each private API that finetune/compat.py uses still behaves as compat.py says it does."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import transformers
from transformers import Trainer, TrainingArguments

from finetune import compat
from finetune.trainer import FinetuneTrainer

# ------------------------------------------------------------------ transformers Trainer

TF = f"transformers {transformers.__version__}"


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_trainer_still_loads_checkpoints_through_the_methods_compat_overrides() -> None:
    assert _parameters(Trainer._load_from_checkpoint) == ["self", "resume_from_checkpoint", "model"], (
        f"{TF} changed Trainer._load_from_checkpoint's parameters; see compat.load_from_checkpoint"
    )
    assert inspect.signature(Trainer._load_from_checkpoint).parameters["model"].default is None, (
        f"{TF} changed Trainer._load_from_checkpoint's model default; see compat.load_from_checkpoint"
    )
    assert _parameters(Trainer._load_best_model) == ["self"], (
        f"{TF} changed Trainer._load_best_model's parameters; see compat.load_best_model"
    )
    source = inspect.getsource(Trainer)
    assert "self._load_from_checkpoint(resume_from_checkpoint)" in source, (
        f"{TF} no longer resumes through Trainer._load_from_checkpoint; see compat.load_from_checkpoint"
    )
    assert "self._load_best_model()" in source, (
        f"{TF} no longer loads the best model through Trainer._load_best_model; see compat.load_best_model"
    )
    for name in ("_load_from_checkpoint", "_load_best_model"):
        assert _parameters(getattr(FinetuneTrainer, name)) == _parameters(getattr(Trainer, name)), name


def test_checkpoints_still_hold_legacy_key_names(tiny_vit: Path, tmp_path: Path) -> None:
    """The behaviour compat.reload_weights works around: if the saved names are the ones in
    memory, the Trainer's lenient reload loads every tensor and the workaround can go."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tiny_vit)
    model.save_pretrained(tmp_path / "saved")
    on_disk = set(load_file(tmp_path / "saved" / "model.safetensors"))
    in_memory = set(model.state_dict())
    assert on_disk != in_memory, (
        f"{TF} now saves ViT checkpoints with the key names it holds in memory; compat.reload_weights "
        "may no longer be needed; see compat.py"
    )


class _Recorder(torch.nn.Module):
    """A classifier whose forward takes **kwargs, like the HF and timm image classifiers."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.seen: list[set[str]] = []

    def forward(self, pixel_values, labels=None, **kwargs):
        self.seen.append(set(kwargs))
        logits = self.linear(pixel_values)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_model_accepts_loss_kwargs_still_decides_what_the_loss_is_given(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    model = _Recorder()
    trainer = Trainer(model=model, args=args)
    assert getattr(trainer, "model_accepts_loss_kwargs", None) is True, (
        f"{TF} no longer sets Trainer.model_accepts_loss_kwargs from the forward signature; see "
        "compat.loss_is_a_batch_mean"
    )
    batch = {"pixel_values": torch.ones(2, 2), "labels": torch.tensor([0, 1])}
    trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(2))
    assert model.seen[-1] == {"num_items_in_batch"}, (
        f"{TF} no longer passes num_items_in_batch to such a model; see compat.loss_is_a_batch_mean"
    )
    compat.loss_is_a_batch_mean(trainer)
    trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(2))
    assert model.seen[-1] == set(), (
        f"{TF} ignores Trainer.model_accepts_loss_kwargs = False; see compat.loss_is_a_batch_mean"
    )
    for method in ("training_step", "compute_loss"):
        assert "self.model_accepts_loss_kwargs" in inspect.getsource(getattr(Trainer, method)), (
            f"{TF}: Trainer.{method} no longer reads model_accepts_loss_kwargs; see compat.loss_is_a_batch_mean"
        )


@pytest.mark.parametrize("name", ["is_fsdp_enabled", "is_deepspeed_enabled", "accelerator"])
def test_trainer_still_has_the_attributes_compat_reads(name: str, tmp_path: Path) -> None:
    trainer = Trainer(model=_Recorder(), args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    assert hasattr(trainer, name), f"{TF}: Trainer has no '{name}' any more; see compat.py"
