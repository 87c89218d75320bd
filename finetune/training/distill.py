"""Knowledge distillation: the Hinton loss, and the frozen teacher whose softened outputs it matches.

With ``model.teacher`` set, every training step runs the teacher (frozen, in eval mode, no
gradients) on the very batch the student gets — after augmentation — and the student
trains on ``(1 - α) × its usual loss + α × T² × KL(softmax(t/T) ‖ softmax(s/T))``
(Hinton, Vinyals & Dean 2015; the T² keeps the soft term's gradients at the scale of the
hard one's as T changes). A multi-label student (one sigmoid per class) matches each of its
classes' softened sigmoids to the teacher's instead: ``T² × BCE(sigmoid(s/T), sigmoid(t/T))``
averaged over the N × C pairs, as its own loss is; the teacher must be multi-label too, and a
multi-label teacher teaches only a multi-label student (a softmax and C sigmoids say
different things). The teacher is deterministic, so a resumed run gets the same
targets and nothing of it is checkpointed. Evaluation scores the student alone, and the
eval loss stays the usual loss, comparable with runs without a teacher.

A teacher whose processor differs from the student's (another input size or
normalisation) gets the student's augmented batch converted on the device: the
normalisation undone and redone with the teacher's mean and std (one multiply-add), and
the batch resized bilinearly (antialiased) to the teacher's input size. So both models see
the same crop of the same image; the teacher sees it at the student's stored resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from finetune import data
from finetune.data.multi_label import is_multi_label
from finetune.models.classifier import resolve_name
from finetune.recipe import ModelConfig
from finetune.utils.errors import UserError, first_line

logger = logging.getLogger("finetune")


class TeacherError(UserError, ValueError):
    """A teacher that cannot be loaded or does not fit the student; one line, with the fix."""


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² × KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch.

    In float32 whatever the logits' precision: under fp16 autocast the log-softmax of
    logits divided by a small T could otherwise overflow.
    """
    t = float(temperature)
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)


def multi_label_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² × the binary cross-entropy of sigmoid(student/T) with sigmoid(teacher/T) as its
    target, averaged over every (image, class) pair; in float32.

    Its gradient in the student's logits, T × (sigmoid(s/T) − sigmoid(t/T)) / (N·C), is zero
    where the student's logits equal the teacher's; its value there is the teacher's own
    entropy, not 0 (a constant, which changes no gradient)."""
    t = float(temperature)
    target = torch.sigmoid(teacher_logits.float() / t)
    return F.binary_cross_entropy_with_logits(student_logits.float() / t, target, reduction="mean") * (t * t)


def mismatch_line(teacher: str, student_multi_label: bool) -> str:
    """The one line for a teacher whose task (single- or multi-label) is not the student's."""
    kinds = ("multi-label (any number of classes per image)", "single-label (one class per image)")
    data, other = kinds if student_multi_label else kinds[::-1]
    return (
        f"model.teacher: '{teacher}' is a {other} classifier and this data is {data}; name a teacher fine-tuned "
        "for the same task on the same classes, or remove model.teacher"
    )


def teacher_path(name: str) -> str:
    """Where to load ``model.teacher`` from: a built-in's cache folder, a local folder
    (``~`` expanded), or a Hub id."""
    return resolve_name(
        name, "model.teacher",
        "name a fine-tuned classifier (e.g. a finetune output folder) or a Hub id like org/name", TeacherError,
    )


def class_names(config: Any) -> list[str]:
    """The class names of a classifier's config, in the order of its logits."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(int(config.num_labels))]


def class_order(teacher: list[str], student: list[str], name: str) -> list[int] | None:
    """For each student class, the index of the teacher's logit for it; None when the two
    lists are equal. The same names in another order are matched by name (the logits are
    reordered); any other difference is a TeacherError."""
    if teacher == student:
        return None
    if sorted(teacher) == sorted(student) and len(set(student)) == len(student):
        return [teacher.index(c) for c in student]
    missing = [c for c in student if c not in teacher]
    extra = [c for c in teacher if c not in student]

    def show(names: list[str]) -> str:
        return ", ".join(names[:5]) + (" …" if len(names) > 5 else "")

    parts = [f"the data has {len(student)} classes, the teacher {len(teacher)}"]
    if missing:
        parts.append(f"not in the teacher: {show(missing)}")
    if extra:
        parts.append(f"only in the teacher: {show(extra)}")
    raise TeacherError(
        f"model.teacher: '{name}' was trained on other classes than this data ({'; '.join(parts)}); "
        "name a teacher fine-tuned on the same classes, or remove model.teacher"
    )


@dataclass
class Teacher:
    """A frozen classifier and what it takes to feed it the student's batches."""

    model: nn.Module
    name: str
    alpha: float
    temperature: float
    #: (height, width) of the teacher's input.
    size: tuple[int, int]
    #: x_teacher = x_student × scale + shift, per channel (None: the same normalisation).
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    #: The teacher logit of each student class (None: the same order).
    order: torch.Tensor | None = None
    #: A multi-label teacher (config ``problem_type``): the sigmoid distillation loss.
    multi_label: bool = False

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        for key in ("scale", "shift", "order"):
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, value.to(device))
        return self

    def inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The student's normalised batch as the teacher's processor would have made it."""
        x = pixel_values.detach()
        if self.scale is not None:
            x = x * self.scale + self.shift
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x

    @torch.no_grad()
    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the student's batch, in the student's class order."""
        self.model.eval()  # whatever a caller did: batch-norm statistics and dropout stay fixed
        out = self.model(pixel_values=self.inputs(pixel_values)).logits
        return out if self.order is None else out.index_select(-1, self.order)

    def loss(self, base: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """(1 - α) × the usual loss + α × the distillation loss (of a multi-label teacher:
        :func:`multi_label_distillation_loss`)."""
        kd_of = multi_label_distillation_loss if self.multi_label else distillation_loss
        kd = kd_of(student_logits, teacher_logits, self.temperature)
        return (1.0 - self.alpha) * base + self.alpha * kd

    def describe(self) -> str:
        size = f"{self.size[0]}×{self.size[1]} px"
        return f"distillation from {self.name}: α = {self.alpha:g}, T = {self.temperature:g}, teacher input {size}"


def open_teacher(cfg: ModelConfig) -> tuple[str, Any, Any]:
    """(path, config, processor) of ``model.teacher``: cheap, so a wrong name stops the run
    before the data is prepared."""
    from transformers import AutoConfig, AutoImageProcessor

    path = teacher_path(cfg.teacher)
    try:
        config = AutoConfig.from_pretrained(path)
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise TeacherError(
            f"model.teacher: cannot load '{cfg.teacher}' ({first_line(err)}); name a fine-tuned image classifier "
            "with its image processor: a finetune output folder, or a Hub id in the local cache"
        ) from None
    return path, config, processor


def load_teacher(
    cfg: ModelConfig, student_classes: list[str], student_processor, opened=None, multi_label: bool | None = None
) -> Teacher:
    """The frozen teacher for a student trained on ``student_classes`` with
    ``student_processor``; a TeacherError, before any weights are read, when its classes
    differ, or when ``multi_label`` (the student's task; None: checked later, by the
    Trainer) is not the teacher's."""
    from transformers import AutoModelForImageClassification

    path, config, processor = opened if opened is not None else open_teacher(cfg)
    teacher_multi_label = is_multi_label(config)
    if multi_label is not None and multi_label != teacher_multi_label:
        raise TeacherError(mismatch_line(cfg.teacher, multi_label))
    names = class_names(config)
    order = class_order(names, list(student_classes), cfg.teacher)
    try:
        # safetensors only: a pickled checkpoint can run code when loaded.
        model = AutoModelForImageClassification.from_pretrained(path, config=config, use_safetensors=True)
    except OSError as err:
        raise TeacherError(
            f"model.teacher: cannot load safetensors weights of '{cfg.teacher}' ({first_line(err)}); "
            "finetune loads only safetensors checkpoints: convert it with save_pretrained()"
        ) from None
    model.eval().requires_grad_(False)
    if order is not None:
        logger.info("teacher: its classes are in another order; its logits are matched to the data's by name")
    mean_s, std_s = (torch.tensor(v, dtype=torch.float64) for v in data.processor_normalization(student_processor))
    mean_t, std_t = (torch.tensor(v, dtype=torch.float64) for v in data.processor_normalization(processor))
    scale = shift = None
    if not (torch.equal(mean_s, mean_t) and torch.equal(std_s, std_t)):
        # x_raw = x_s × std_s + mean_s; x_t = (x_raw - mean_t) / std_t.
        scale = (std_s / std_t).float().view(1, 3, 1, 1)
        shift = ((mean_s - mean_t) / std_t).float().view(1, 3, 1, 1)
    return Teacher(
        model=model,
        name=cfg.teacher,
        alpha=cfg.alpha,
        temperature=cfg.temperature,
        size=tuple(int(v) for v in data.output_size(processor)),
        scale=scale,
        shift=shift,
        order=torch.tensor(order) if order is not None else None,
        multi_label=teacher_multi_label,
    )
