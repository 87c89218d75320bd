"""The HF Trainer as finetune runs it: uint8 batches become normalised (and augmented) floats on the device."""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from . import compat, data
from .distill import Teacher


class FinetuneTrainer(Trainer):
    """The HF Trainer, with batches turned from uint8 to normalised (and, in training,
    augmented) floats on the training device just before the forward pass.

    Give it decoded splits wrapped in ``data.FastRows`` (one gather per batch from the
    memory-mapped cache); nothing in the Trainer needs them as ``datasets.Dataset``
    (``remove_unused_columns`` is off, and no length-grouped sampler is used).
    """

    def __init__(
        self, *args: Any, batch_transform: data.BatchTransform, teacher: Teacher | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batch_transform = batch_transform
        #: Knowledge distillation (distill.py): a frozen model run on each training batch,
        #: kept outside ``self.model`` so that it is neither trained nor saved.
        self.teacher = teacher.to(self.args.device) if teacher is not None else None
        compat.loss_is_a_batch_mean(self)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        return compat.load_from_checkpoint(self, resume_from_checkpoint, model, super()._load_from_checkpoint)

    def _load_best_model(self):
        return compat.load_best_model(self, super()._load_best_model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        seed = None
        if model.training:
            # One seed per (run seed, optimizer step, micro-batch, rank): augmentation is a
            # pure function of where training is, so resuming mid-epoch (after SIGTERM) draws
            # the same crops as a run that never stopped.
            step = self.state.global_step
            self._micro = self._micro + 1 if getattr(self, "_micro_step", None) == step else 0
            self._micro_step = step
            seed = ((self.args.seed * 1_000_003 + step) * 1_009 + self._micro) * 101 + self.args.process_index
        inputs["pixel_values"] = self.batch_transform(inputs["pixel_values"], train=model.training, seed=seed)
        if self.teacher is None or not model.training:
            # Evaluation scores the student alone, with the usual loss.
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        # Distillation: the usual loss and the student's logits, then the teacher's logits for
        # the same augmented batch, in the autocast the accelerator runs the student in.
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        with self.accelerator.autocast():
            teacher_logits = self.teacher.logits(inputs["pixel_values"])
        loss = self.teacher.loss(loss, outputs.logits, teacher_logits)
        return (loss, outputs) if return_outputs else loss
