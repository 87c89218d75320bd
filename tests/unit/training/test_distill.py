"""Knowledge distillation: the loss, the frozen teacher, its checks, and training with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.data import BatchTransform
from finetune.recipe import ModelConfig, RecipeError, recipe_from_dict
from finetune.training import distill
from tests.helpers.images import CLASSES, make_image_folder
from tests.helpers.models import make_tiny_resnet, make_tiny_vit

# ------------------------------------------------------------------------------ the loss


def test_distillation_loss_is_the_hinton_loss_computed_by_hand() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4) * 3, torch.randn(5, 4) * 3
    for t in (1.0, 2.5, 4.0):
        p = torch.softmax(teacher / t, dim=-1)
        q = torch.softmax(student / t, dim=-1)
        by_hand = (p * (p.log() - q.log())).sum(-1).mean() * t * t  # KL(p ‖ q), batch mean, × T²
        torch.testing.assert_close(distill.distillation_loss(student, teacher, t), by_hand)
    assert distill.distillation_loss(teacher, teacher, 4.0).abs() < 1e-6  # matching the teacher costs nothing
    # float32 whatever comes in: half-precision logits give the float32 value.
    half = distill.distillation_loss(student.bfloat16(), teacher.bfloat16(), 2.0)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, distill.distillation_loss(student.bfloat16().float(), teacher.bfloat16().float(), 2.0))


def test_the_student_loss_mixes_the_two_terms_by_alpha() -> None:
    torch.manual_seed(1)
    student, teacher, base = torch.randn(3, 4), torch.randn(3, 4), torch.tensor(0.7)
    kd = distill.distillation_loss(student, teacher, 3.0)

    def mixed(alpha: float) -> torch.Tensor:
        return distill.Teacher(torch.nn.Identity(), "t", alpha, 3.0, (8, 8)).loss(base, student, teacher)

    assert torch.equal(mixed(0.0), base)
    torch.testing.assert_close(mixed(1.0), kd)
    torch.testing.assert_close(mixed(0.25), 0.75 * base + 0.25 * kd)


# --------------------------------------------------------------------------- classes


def test_class_order_matches_by_name_and_refuses_other_classes() -> None:
    assert distill.class_order(["a", "b", "c"], ["a", "b", "c"], "t") is None
    assert distill.class_order(["c", "a", "b"], ["a", "b", "c"], "t") == [1, 2, 0]
    with pytest.raises(distill.TeacherError) as err:
        distill.class_order(["a", "b", "x", "y"], ["a", "b", "c"], "teach")
    message = str(err.value)
    assert "\n" not in message and message.startswith("model.teacher: 'teach' was trained on other classes")
    assert "not in the teacher: c" in message and "only in the teacher: x, y" in message


# ---------------------------------------------------------------------------- helpers


def _with_classes(path: Path, classes: list[str]) -> Path:
    """A tiny model saved as a classifier of ``classes`` (as a finetune output folder is)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    config.id2label = dict(enumerate(classes))
    config.label2id = {c: i for i, c in enumerate(classes)}
    config.save_pretrained(path)
    return path


def _imagenet_normalised(path: Path) -> Path:
    from transformers import ConvNextImageProcessor

    ConvNextImageProcessor(
        size={"shortest_edge": 32}, crop_pct=0.875, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    return {
        # ImageNet normalisation (the student's is 0.5 / 0.5), the student's 32 px.
        "resnet": _imagenet_normalised(_with_classes(make_tiny_resnet(root / "resnet", num_labels=3), CLASSES)),
        # The student's normalisation, a larger input: 48 px.
        "vit48": _with_classes(make_tiny_vit(root / "vit48", image_size=48, num_labels=3), CLASSES),
        # The same classes in another order.
        "shuffled": _with_classes(make_tiny_resnet(root / "shuffled", num_labels=3), CLASSES[::-1]),
        "other": _with_classes(make_tiny_resnet(root / "other", num_labels=3), ["cat", "dog", "red"]),
    }


def _raw(model: Path, images: Path, out: Path, **model_keys) -> dict:
    return {
        "description": "distillation test",
        "model": {"name_or_path": str(model), "strategy": "full", **model_keys},
        "data": {"dataset": str(images), "augment": {"crop_scale": [0.5, 1.0], "hflip": True, "preset": "trivial_augment"}},
        "training": {
            "num_train_epochs": 2, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "seed": 0,
            "use_cpu": True, "disable_tqdm": True, "logging_steps": 1, "save_total_limit": None,
        },
        "metrics": ["accuracy"],
        "output_dir": str(out),
    }


def _train(raw: dict) -> dict:
    from finetune.training import train as train_lib

    return train_lib.train(recipe_from_dict(raw))


def _losses(out: Path) -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [row["loss"] for row in history if "loss" in row]


# ------------------------------------------------------------------- the teacher's input


def test_the_teacher_gets_the_student_batch_as_its_own_processor_makes_it(tiny_vit: Path, teachers) -> None:
    """Renormalised (ImageNet statistics for the ResNet) and resized (48 px for the ViT) on
    the device: the same pixels the teacher's own transform makes from the uint8 batch."""
    from transformers import AutoImageProcessor

    student = AutoImageProcessor.from_pretrained(tiny_vit)
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    x = BatchTransform.for_processor(student, None)(pixels, train=False)
    resnet = distill.load_teacher(ModelConfig(teacher=str(teachers["resnet"])), CLASSES, student)
    assert resnet.size == (32, 32) and resnet.scale is not None and resnet.order is None
    own = BatchTransform.for_processor(AutoImageProcessor.from_pretrained(teachers["resnet"]), None)(pixels, train=False)
    torch.testing.assert_close(resnet.inputs(x), own, rtol=1e-5, atol=1e-5)
    vit = distill.load_teacher(ModelConfig(teacher=str(teachers["vit48"])), CLASSES, student)
    assert vit.scale is None and vit.size == (48, 48)
    big = vit.inputs(x)
    assert big.shape == (4, 3, 48, 48)
    torch.testing.assert_close(
        big, torch.nn.functional.interpolate(x, size=(48, 48), mode="bilinear", antialias=True, align_corners=False)
    )
    assert vit.logits(x).shape == (4, 3)


def test_a_teacher_with_the_classes_in_another_order_is_matched_by_name(tiny_vit: Path, teachers) -> None:
    from transformers import AutoImageProcessor

    student = AutoImageProcessor.from_pretrained(tiny_vit)
    plain = distill.load_teacher(ModelConfig(teacher=str(teachers["shuffled"])), CLASSES[::-1], student)
    reordered = distill.load_teacher(ModelConfig(teacher=str(teachers["shuffled"])), CLASSES, student)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reordered.logits(x), plain.logits(x).flip(-1))


# ------------------------------------------------------------------------ recipe checks


@pytest.mark.parametrize(
    "model, message",
    [
        ({"teacher": "t", "distill_alpha": 1.5}, "'model.distill_alpha' weighs the teacher's term: use a number in [0, 1]"),
        ({"teacher": "t", "distill_temperature": 0}, "'model.distill_temperature' must be > 0"),
        ({"distill_alpha": 0.5}, "'model.distill_alpha' only applies with 'model.teacher'"),
        ({"distill_temperature": 2.0}, "'model.distill_temperature' only applies with 'model.teacher'"),
        ({"teacher": ""}, "'model.teacher' is empty"),
        ({"teacher": "t", "strategy": "linear_probe"}, "a linear probe on cached features runs it once"),
    ],
)
def test_recipe_refuses_bad_distillation_settings(model: dict, message: str) -> None:
    raw = {"description": "d", "model": {"name_or_path": "m", **model}, "data": {"dataset": "x"}, "output_dir": "o"}
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(raw, "r.json")
    assert message in str(err.value) and str(err.value).startswith("r.json: ")


def test_recipe_defaults_and_a_probe_without_the_cache_may_distil() -> None:
    raw = {"description": "d", "model": {"name_or_path": "m", "teacher": "t"}, "data": {"dataset": "x"}, "output_dir": "o"}
    m = recipe_from_dict(raw).model
    assert (m.alpha, m.temperature) == (0.5, 4.0)
    raw["model"] |= {"strategy": "linear_probe", "feature_cache": False, "distill_alpha": 0.0, "distill_temperature": 1.0}
    m = recipe_from_dict(raw).model
    assert (m.alpha, m.temperature) == (0.0, 1.0)


# ----------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("distill-data") / "images", per_class=12)


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
        raw = _raw(tiny_vit, images, out, teacher=str(teachers["resnet"]), distill_alpha=0.7, distill_temperature=2.0)
        raw["data"]["augment"]["random_erasing"] = 0.25
        results = _train(raw)
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
    _train(dict(raw, output_dir=str(out)))
    ours, theirs = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "resumed weights differ from an uninterrupted run"
    assert _losses(out)[-3:] == _losses(reference)[-3:]


@pytest.mark.e2e
def test_alpha_zero_trains_exactly_as_without_a_teacher(tiny_vit, teachers, images, tmp_path: Path) -> None:
    """With α = 0 the teacher still runs on every batch, and its term has no weight: the loss,
    step by step, and the weights are those of the plain run. With α > 0 they are not."""
    plain = tmp_path / "plain"
    _train(_raw(tiny_vit, images, plain))
    zero = tmp_path / "zero"
    _train(_raw(tiny_vit, images, zero, teacher=str(teachers["vit48"]), distill_alpha=0.0))
    assert _losses(zero) == _losses(plain) and len(_losses(plain)) > 4
    a, b = load_file(zero / "model.safetensors"), load_file(plain / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    half = tmp_path / "half"
    _train(_raw(tiny_vit, images, half, teacher=str(teachers["vit48"]), distill_alpha=0.5))
    assert _losses(half)[0] != _losses(plain)[0]


def test_a_teacher_of_other_classes_stops_before_training(tiny_vit, teachers, images, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(distill.TeacherError) as err:
        _train(_raw(tiny_vit, images, out, teacher=str(teachers["other"])))
    message = str(err.value)
    assert "\n" not in message and "was trained on other classes" in message
    assert "not in the teacher: blue, green" in message and "only in the teacher: cat, dog" in message
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()


def test_a_missing_teacher_folder_stops_before_the_data_pass(tiny_vit, images, tmp_path: Path) -> None:
    with pytest.raises(distill.TeacherError, match=r"model.teacher: local folder '.*nowhere' does not exist"):
        _train(_raw(tiny_vit, images, tmp_path / "out", teacher=str(tmp_path / "nowhere")))
    assert not (tmp_path / "out" / "data_report.json").exists()


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
    raw = _raw(tiny_vit, images, tmp_path / "bf16", teacher=str(teachers["resnet"]))
    raw["training"] |= {"bf16": True, "max_steps": 2}
    _train(raw)
    assert states["teacher"] == states["student"] == {True}
