"""distill.py: the Hinton loss, the teacher's classes and input, the recipe's checks, and a bad
teacher stopping a run before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.data import BatchTransform
from finetune.recipe import ModelConfig, RecipeError, recipe_from_dict
from finetune.training import distill
from tests.helpers.distill import make_teachers, student_recipe, train_recipe
from tests.helpers.images import CLASSES, make_image_folder

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


def test_multi_label_distillation_is_t_squared_bce_of_the_softened_sigmoids() -> None:
    torch.manual_seed(2)
    student, teacher = torch.randn(5, 4) * 3, torch.randn(5, 4) * 3
    for t in (1.0, 2.5, 4.0):
        p, q = torch.sigmoid(teacher.double() / t), torch.sigmoid(student.double() / t)
        by_hand = -(p * q.log() + (1 - p) * (1 - q).log()).mean() * t * t  # over all N × C pairs
        torch.testing.assert_close(distill.multi_label_distillation_loss(student, teacher, t).double(), by_hand)
    assert distill.multi_label_distillation_loss(student.bfloat16(), teacher.bfloat16(), 2.0).dtype == torch.float32


def test_multi_label_distillation_has_no_gradient_where_the_student_is_the_teacher() -> None:
    torch.manual_seed(3)
    teacher = torch.randn(6, 5) * 4
    same = teacher.clone().requires_grad_(True)
    distill.multi_label_distillation_loss(same, teacher, 3.0).backward()
    assert same.grad.abs().max() < 1e-7
    other = (teacher + torch.randn(6, 5)).requires_grad_(True)
    distill.multi_label_distillation_loss(other, teacher, 3.0).backward()
    # T × (σ(s/T) − σ(t/T)) / (N·C): each logit is pulled toward the teacher's.
    expected = 3.0 * (torch.sigmoid(other.detach() / 3.0) - torch.sigmoid(teacher / 3.0)) / other.numel()
    torch.testing.assert_close(other.grad, expected)
    assert (other.grad * (other.detach() - teacher) > 0).all()


def test_a_multi_label_teacher_mixes_in_the_sigmoid_term() -> None:
    torch.manual_seed(4)
    student, teacher, base = torch.randn(3, 4), torch.randn(3, 4), torch.tensor(0.7)
    kd = distill.multi_label_distillation_loss(student, teacher, 2.0)
    multi = distill.Teacher(torch.nn.Identity(), "t", 0.25, 2.0, (8, 8), multi_label=True)
    torch.testing.assert_close(multi.loss(base, student, teacher), 0.75 * base + 0.25 * kd)
    assert not torch.allclose(kd, distill.distillation_loss(student, teacher, 2.0))


# --------------------------------------------------------------------------- classes


def test_class_order_matches_by_name_and_refuses_other_classes() -> None:
    assert distill.class_order(["a", "b", "c"], ["a", "b", "c"], "t") is None
    assert distill.class_order(["c", "a", "b"], ["a", "b", "c"], "t") == [1, 2, 0]
    with pytest.raises(distill.TeacherError) as err:
        distill.class_order(["a", "b", "x", "y"], ["a", "b", "c"], "teach")
    message = str(err.value)
    assert "\n" not in message and message.startswith("model.teacher: 'teach' was trained on other classes")
    assert "not in the teacher: c" in message and "only in the teacher: x, y" in message


# --------------------------------------------------------------------------- teachers


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    return make_teachers(tmp_path_factory.mktemp("teachers"))


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


def test_teacher_and_student_must_both_be_multi_label_or_neither(tiny_vit: Path, teachers, tmp_path: Path) -> None:
    """One line naming model.teacher, before the teacher's weights are read."""
    import shutil

    from transformers import AutoConfig, AutoImageProcessor

    from finetune.data.multi_label import PROBLEM_TYPE

    student = AutoImageProcessor.from_pretrained(tiny_vit)
    multi = tmp_path / "multi-teacher"
    shutil.copytree(teachers["vit48"], multi)
    config = AutoConfig.from_pretrained(multi)
    config.problem_type = PROBLEM_TYPE
    config.save_pretrained(multi)
    single = str(teachers["vit48"])
    for source, student_multi, kind in ((single, True, "single-label"), (multi, False, "multi-label")):
        unweighted = tmp_path / f"no-weights-{kind}"  # so the refusal cannot come after reading them
        shutil.copytree(source, unweighted, ignore=shutil.ignore_patterns("*.safetensors"))
        with pytest.raises(distill.TeacherError) as err:
            distill.load_teacher(ModelConfig(teacher=str(unweighted)), CLASSES, student, multi_label=student_multi)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"model.teacher: '{unweighted}' is a {kind}")
    loaded = distill.load_teacher(ModelConfig(teacher=str(multi)), CLASSES, student, multi_label=True)
    assert loaded.multi_label
    assert not distill.load_teacher(ModelConfig(teacher=single), CLASSES, student, multi_label=False).multi_label
    # Without the student's task (None) the Trainer checks it, from the student model's config.
    assert distill.load_teacher(ModelConfig(teacher=str(multi)), CLASSES, student).multi_label


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


def test_a_teacher_of_other_classes_stops_before_training(tiny_vit, teachers, images, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(distill.TeacherError) as err:
        train_recipe(student_recipe(tiny_vit, images, out, teacher=str(teachers["other"])))
    message = str(err.value)
    assert "\n" not in message and "was trained on other classes" in message
    assert "not in the teacher: blue, green" in message and "only in the teacher: cat, dog" in message
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()


def test_a_missing_teacher_folder_stops_before_the_data_pass(tiny_vit, images, tmp_path: Path) -> None:
    with pytest.raises(distill.TeacherError, match=r"model.teacher: local folder '.*nowhere' does not exist"):
        train_recipe(student_recipe(tiny_vit, images, tmp_path / "out", teacher=str(tmp_path / "nowhere")))
    assert not (tmp_path / "out" / "data_report.json").exists()
