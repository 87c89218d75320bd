"""Training with a teacher: frozen in eval mode on every step, named in the card, exact resumes, α
= 0 as without it, the student's autocast."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.training import distill
from tests.helpers.distill import make_teachers, student_recipe, train_recipe
from tests.helpers.images import make_image_folder


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    return make_teachers(tmp_path_factory.mktemp("teachers"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("distill-data") / "images", per_class=12)


def _losses(out: Path) -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [row["loss"] for row in history if "loss" in row]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_vit, teachers, images):
    """A student ViT distilled from the ResNet teacher (other normalisation) for 2 epochs with
    a checkpoint per epoch, every kind of augmentation on; the Teacher object it trained with."""
    from _pytest.monkeypatch import MonkeyPatch

    out = tmp_path_factory.mktemp("distilled") / "out"
    seen: dict = {"teacher": None, "calls": 0, "modes": set(), "grad": set()}
    real = distill.load_teacher

    def capturing(*args, **kwargs):
        teacher = real(*args, **kwargs)
        seen["teacher"] = teacher

        def record(module, inputs):
            seen["calls"] += 1
            seen["modes"].add(module.training)
            seen["grad"].add(torch.is_grad_enabled())

        teacher.model.register_forward_pre_hook(record)
        return teacher

    patch = MonkeyPatch()
    patch.setattr(distill, "load_teacher", capturing)
    try:
        raw = student_recipe(tiny_vit, images, out, teacher=str(teachers["resnet"]), distill_alpha=0.7, distill_temperature=2.0)
        raw["data"]["augment"]["random_erasing"] = 0.25
        results = train_recipe(raw)
    finally:
        patch.undo()
    return raw, out, results, seen


@pytest.mark.e2e
def test_the_teacher_runs_frozen_in_eval_mode_on_every_training_step(distilled, teachers, tiny_vit) -> None:
    _, out, _, seen = distilled
    teacher = seen["teacher"]
    steps = json.loads((out / "trainer_state.json").read_text())["global_step"]
    assert seen["calls"] == steps  # once per training step, never in evaluation
    assert seen["modes"] == {False} and seen["grad"] == {False}
    assert not teacher.model.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.model.parameters())
    # Weights and batch-norm statistics as saved: nothing of the teacher trained or drifted.
    saved = load_file(teachers["resnet"] / "model.safetensors")
    state = teacher.model.state_dict()
    assert all(torch.equal(state[k].cpu(), v) for k, v in saved.items())
    # The teacher is not part of the student's checkpoint.
    assert load_file(out / "model.safetensors").keys() == load_file(tiny_vit / "model.safetensors").keys()


@pytest.mark.e2e
def test_the_card_names_the_teacher_and_both_settings(distilled, teachers) -> None:
    _, out, _, _ = distilled
    card = (out / "README.md").read_text()
    assert f"distilled from the teacher\n**{teachers['resnet']}**" in card
    assert "α (`distill_alpha`) = 0.7 and T (`distill_temperature`) = 2.0" in card


@pytest.mark.e2e
def test_a_distilled_run_resumes_exactly(distilled, tmp_path: Path) -> None:
    """The run restarted from its end-of-epoch-1 checkpoint ends with the uninterrupted
    run's weights, bit for bit: the teacher's targets are the same on the second pass."""
    raw, reference, _, _ = distilled
    checkpoints = sorted(reference.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 2
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(reference / "recipe.json", out / "recipe.json")
    shutil.copytree(checkpoints[0], out / checkpoints[0].name)
    train_recipe(dict(raw, output_dir=str(out)))
    ours, theirs = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "resumed weights differ from an uninterrupted run"
    assert _losses(out)[-3:] == _losses(reference)[-3:]


@pytest.mark.e2e
def test_alpha_zero_trains_exactly_as_without_a_teacher(tiny_vit, teachers, images, tmp_path: Path) -> None:
    """With α = 0 the teacher still runs on every batch, and its term has no weight: the loss,
    step by step, and the weights are those of the plain run. With α > 0 they are not."""
    plain = tmp_path / "plain"
    train_recipe(student_recipe(tiny_vit, images, plain))
    zero = tmp_path / "zero"
    train_recipe(student_recipe(tiny_vit, images, zero, teacher=str(teachers["vit48"]), distill_alpha=0.0))
    assert _losses(zero) == _losses(plain) and len(_losses(plain)) > 4
    a, b = load_file(zero / "model.safetensors"), load_file(plain / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    half = tmp_path / "half"
    train_recipe(student_recipe(tiny_vit, images, half, teacher=str(teachers["vit48"]), distill_alpha=0.5))
    assert _losses(half)[0] != _losses(plain)[0]


@pytest.mark.e2e
def test_the_teacher_runs_in_the_students_autocast(tiny_vit, teachers, images, tmp_path: Path, monkeypatch) -> None:
    """bf16 mixed precision on CPU: the teacher's forward runs under the same autocast."""
    from finetune.models import classifier as model_lib

    states: dict[str, set] = {"student": set(), "teacher": set()}
    real_teacher, real_load = distill.load_teacher, model_lib.load_model

    def watch(model: torch.nn.Module, who: str) -> None:
        # On a layer inside the model: accelerate enters autocast inside the model's forward.
        layer = next(m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))

        def record(module, inputs) -> None:  # a pre-hook that returned something would replace the input
            if module.training == (who == "student"):
                states[who].add(torch.is_autocast_enabled("cpu"))

        layer.register_forward_pre_hook(record)

    def load_teacher(*args, **kwargs):
        teacher = real_teacher(*args, **kwargs)
        watch(teacher.model, "teacher")
        return teacher

    def load_model(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        watch(loaded.model, "student")
        return loaded

    monkeypatch.setattr(distill, "load_teacher", load_teacher)
    monkeypatch.setattr(model_lib, "load_model", load_model)
    raw = student_recipe(tiny_vit, images, tmp_path / "bf16", teacher=str(teachers["resnet"]))
    raw["training"] |= {"bf16": True, "max_steps": 2}
    train_recipe(raw)
    assert states["teacher"] == states["student"] == {True}
