"""The HF Trainer as finetune runs it: uint8 batches become normalised (and augmented) floats on the device."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import Trainer

from . import compat, data
from .distill import Teacher

logger = logging.getLogger("finetune")

#: What an optimizer's keyword arguments hold when it builds its own parameter groups
#: (GaLore and APOLLO: "params"; LOMO: "model"; the layer-wise ones: "optimizer_dict").
_OWN_GROUPS = ("params", "model", "optimizer_dict")


class FinetuneTrainer(Trainer):
    """The HF Trainer, with batches turned from uint8 to normalised (and, in training,
    augmented) floats on the training device just before the forward pass.

    Give it decoded splits wrapped in ``data.FastRows`` (one gather per batch from the
    memory-mapped cache); nothing in the Trainer needs them as ``datasets.Dataset``
    (``remove_unused_columns`` is off, and no length-grouped sampler is used).
    """

    def __init__(
        self,
        *args: Any,
        batch_transform: data.BatchTransform,
        teacher: Teacher | None = None,
        layer_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batch_transform = batch_transform
        #: Knowledge distillation (distill.py): a frozen model run on each training batch,
        #: kept outside ``self.model`` so that it is neither trained nor saved.
        self.teacher = teacher.to(self.args.device) if teacher is not None else None
        #: ``model.layer_decay``: the optimizer gets one parameter group per depth (layer_decay.py).
        self.layer_decay = layer_decay
        compat.loss_is_a_batch_mean(self)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        return compat.load_from_checkpoint(self, resume_from_checkpoint, model, super()._load_from_checkpoint)

    def _load_best_model(self):
        return compat.load_best_model(self, super()._load_best_model)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer (``training.optim`` and its arguments), given the parameter
        groups of ``model.layer_decay`` when the recipe sets it."""
        if self.optimizer is not None or self.layer_decay is None:
            return super().create_optimizer(model)
        from . import layer_decay

        opt_model = self.model if model is None else model
        # The Trainer's own weight-decay split (no decay for biases and norms).
        decay_names = set(self.get_decay_parameter_names(opt_model))
        groups = layer_decay.param_groups(
            opt_model, self.layer_decay, self.args.learning_rate, self.args.weight_decay, decay_names
        )
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        # A factory (Muon) or an optimizer that builds its own groups would drop ours.
        if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)) or any(
            k in kwargs for k in _OWN_GROUPS
        ):
            raise layer_decay.LayerDecayError(
                f"model.layer_decay: training.optim '{self.args.optim}' builds its own parameter groups, so the "
                "learning rate cannot decay by layer; use e.g. adamw_torch or sgd, or remove model.layer_decay"
            )
        self.optimizer = optimizer_cls([g.as_dict() for g in groups], **kwargs)
        if self.args.process_index == 0:
            logger.info("%s", layer_decay.describe(groups, self.layer_decay))
        return self.optimizer

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
