"""The HF Trainer as finetune runs it: uint8 batches become normalised (and augmented) floats on the device, and the loss is finetune's own (:mod:`finetune.training.losses`)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from transformers import Trainer

from finetune import data
from finetune.data import multi_label
from finetune.data.streaming.loader import stream_loader
from finetune.data.streaming.stream import ImageStream
from finetune.evaluation.tta import SOFTMAX, TestTimeAugmentation
from finetune.models import lora
from finetune.models import temperature as head_temperature
from finetune.probe.features import find_head
from finetune.recipe import Recipe
from finetune.training import losses
from finetune.training.distill import Teacher, TeacherError, mismatch_line
from finetune.training.stream_state import StreamState
from finetune.utils import compat
from finetune.utils.errors import UserError


def trainer_options(recipe: Recipe) -> dict[str, Any]:
    """The keyword arguments of :class:`FinetuneTrainer` that the recipe's regularisers set
    (mixup and CutMix come with the batch transform, label smoothing with the arguments)."""
    t = recipe.training
    return {
        "class_weights": recipe.data.class_weights,
        "sampler": recipe.data.sampler,
        "ema_decay": t.get("ema_decay"),
        "ema_warmup": t.get("ema_warmup", True),
    }


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

    ``teacher``: knowledge distillation (:mod:`finetune.training.distill`), a term added to
    the training loss. The regularisers: ``class_weights`` "balanced" weights the training
    loss by class (balance.class_weights, from the train dataset's labels); ``sampler``
    "balanced" draws classes evenly (balance.BalancedSampler, seeded by ``data_seed``, else
    ``seed``); ``ema_decay`` keeps an EMA of the weights (:mod:`finetune.training.ema`) that
    evaluation, model selection and the saved model use. Mixup/CutMix come from
    ``batch_transform.mix``, label smoothing from ``args.label_smoothing_factor``.
    """

    def __init__(
        self,
        *args: Any,
        batch_transform: data.BatchTransform,
        teacher: Teacher | None = None,
        layer_decay: float | None = None,
        class_weights: str | None = None,
        sampler: str | None = None,
        ema_decay: float | None = None,
        ema_warmup: bool = True,
        stream: StreamState | None = None,
        tta: TestTimeAugmentation | None = None,
        **kwargs: Any,
    ) -> None:
        with warnings.catch_warnings():
            # The Trainer's own label smoother cannot smooth a multi-label model's targets and says
            # it is off; the loss here smooths them itself (losses.multi_label_loss).
            warnings.filterwarnings("ignore", message="Label smoothing is not compatible with multi-label")
            super().__init__(*args, **kwargs)
        self.batch_transform = batch_transform
        #: A streamed run's position and unreadable images (:mod:`finetune.training.stream_state`).
        self.stream = stream
        if stream is not None:
            if self.args.restore_callback_states_from_checkpoint:
                raise UserError(
                    "training.restore_callback_states_from_checkpoint re-creates the callbacks on resume, which would "
                    "drop a streamed run's own state; remove it, or set data.streaming to false"
                )
            self.add_callback(stream)
        #: Test-time augmentation of evaluation batches (:mod:`finetune.evaluation.tta`); None:
        #: one view. Training leaves it None, so that the per-epoch scores and model selection
        #: stay single-view, and sets it for the final scores.
        self.tta = tta
        #: Knowledge distillation (:mod:`finetune.training.distill`): a frozen model run on each
        #: training batch, kept outside ``self.model`` so that it is neither trained nor saved.
        self.teacher = teacher.to(self.args.device) if teacher is not None else None
        #: ``model.layer_decay``: the optimizer gets one parameter group per depth
        #: (:mod:`finetune.models.layer_decay`).
        self.layer_decay = layer_decay
        # The loss below is a batch mean; the Trainer must average micro-batches and
        # processes rather than sum them.
        compat.loss_is_a_batch_mean(self)
        config = getattr(self.model, "config", None)
        #: Classes of the model's head (mixup's one-hot targets need it before the forward).
        self.num_classes: int | None = getattr(config, "num_labels", None)
        #: The model's config says multi-label (``finetune.data.multi_label``): multi-hot
        #: float targets, binary cross-entropy, positive weights instead of class weights.
        self.multi_label = config is not None and multi_label.is_multi_label(config)
        if self.teacher is not None and self.teacher.multi_label != self.multi_label:
            raise TeacherError(mismatch_line(self.teacher.name, self.multi_label))
        #: ``data.class_weights`` "balanced": the class weights of the cross-entropy, or for a
        #: multi-label model the ``pos_weight`` of each class's binary cross-entropy.
        self.class_weights = None
        self.train_sampler = None
        if class_weights is not None or sampler is not None:
            if self.train_dataset is None:
                raise ValueError("class_weights and sampler are computed from the train dataset; give one")
            # From the train piece only: the validation piece and the eval split stay unseen.
            self._balance(class_weights, sampler, config)
        self.ema = None
        if ema_decay is not None:
            from finetune.training.ema import EmaCallback, WeightEma

            if self.is_fsdp_enabled or self.is_deepspeed_enabled:
                raise UserError("training.ema_decay: an EMA of the weights needs them whole on each process, "
                                "which FSDP and DeepSpeed shard; remove ema_decay or run with DDP")
            self.ema = WeightEma(self.model, ema_decay, ema_warmup)
            self.add_callback(EmaCallback(self.ema))

    def _balance(self, class_weights: str | None, sampler: str | None, config: Any) -> None:
        """``data.class_weights`` and ``data.sampler`` from the train dataset's labels."""
        from finetune.training import balance

        if self.multi_label:
            if sampler is not None:
                raise UserError(
                    f"data.sampler: '{sampler}' draws images by their one class, and this data gives an image any "
                    "number of classes; remove data.sampler (data.class_weights: balanced weights each class's "
                    "positives instead)"
                )
            if class_weights == "balanced":
                targets = balance.train_targets(self.train_dataset, self.num_classes)
                names = getattr(config, "id2label", None) or {}
                self.class_weights = balance.positive_weights(targets, [str(names.get(i, i)) for i in range(targets.shape[1])])
            return
        labels = balance.train_labels(self.train_dataset)
        if class_weights == "balanced":
            self.class_weights = balance.class_weights(labels, self.num_classes or int(labels.max()) + 1)
        if sampler == "balanced":
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            self.train_sampler = balance.BalancedSampler(labels, seed)

    def describe_regularisers(self) -> str:
        """What regularises training beyond augmentation, for the log and the card ("none")."""
        parts = []
        if self.args.label_smoothing_factor > 0:
            parts.append(f"label smoothing {self.args.label_smoothing_factor:g}")
        if self.batch_transform.mix is not None:
            parts.append(self.batch_transform.mix.describe())
        if self.class_weights is not None:
            w = self.class_weights
            kind = "positive weights (negatives / positives per class)" if self.multi_label else "class weights"
            parts.append(f"balanced {kind} in the loss ({float(w.min()):.3g} to {float(w.max()):.3g})")
        if self.train_sampler is not None:
            parts.append("class-balanced sampling (with replacement)")
        if self.ema is not None:
            parts.append(self.ema.describe())
        return "; ".join(parts) or "none"

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        result = compat.load_from_checkpoint(
            self, resume_from_checkpoint, model, super()._load_from_checkpoint, lora.load_if_adapted
        )
        if self.ema is not None and model is None:
            self.ema.load(resume_from_checkpoint)
        return result

    def _load_best_model(self):
        result = compat.load_best_model(self, super()._load_best_model, lora.load_if_adapted)
        if self.ema is not None:
            # The best checkpoint was chosen by its average's scores: its average is the model.
            self.ema.load(self.state.best_model_checkpoint)
        return result

    def get_train_dataloader(self):
        """A streamed split's own loader (its batches are made in its workers), else the Trainer's."""
        if isinstance(self.train_dataset, ImageStream):
            return stream_loader(self.train_dataset, self.args)
        return super().get_train_dataloader()

    def get_eval_dataloader(self, eval_dataset=None):
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(dataset, ImageStream):
            return stream_loader(dataset, self.args)
        return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        # ``predict`` (the calibration's pass over the validation piece) reads a streamed split
        # through the same loader as ``evaluate``: its batches carry the unreadable images'
        # records, which the default collator would turn into tensors.
        if isinstance(test_dataset, ImageStream):
            return stream_loader(test_dataset, self.args)
        return super().get_test_dataloader(test_dataset)

    def train(self, resume_from_checkpoint=None, *args: Any, **kwargs: Any):
        """The Trainer's training; a streamed run resumed from a checkpoint starts the stream
        where that checkpoint's step left it."""
        if self.stream is not None and isinstance(resume_from_checkpoint, str):
            self.stream.resume(self, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        return compat.train_sampler(self.train_sampler, train_dataset, super()._get_train_sampler)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """The Trainer's evaluation; during training with an EMA, of the averaged weights
        (so the per-epoch scores, early stopping and the best checkpoint follow them)."""
        if self.ema is None or self.ema.applied:
            return super().evaluate(*args, **kwargs)
        with self.ema.swapped_in(self.model):
            return super().evaluate(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        # In training, the average goes beside the weights of each checkpoint. The Trainer
        # saves the weights first and trainer_state.json last, so a checkpoint that
        # finetune.training.checkpoints.checkpoint_is_complete accepts holds the average too.
        if self.ema is not None and not self.ema.applied and self.args.should_save:
            self.ema.save(output_dir or self.args.output_dir, self.state.global_step)

    def save_final_model(self, temperature: float | None = None) -> None:
        """The run's model in the output folder, as ``pipeline()`` loads it without finetune
        or peft: LoRA's adapters merged into the weights, any other model as ``save_model``
        writes it (the checkpoints of a LoRA run hold the adapters alone). ``temperature``:
        folded into the saved head (for LoRA after merging); the live model is left as it was."""
        model = self.accelerator.unwrap_model(self.model)
        if lora.is_adapted(model):
            fold = (lambda merged: head_temperature.fold(find_head(merged)[1], temperature)) if temperature else None
            lora.save_merged(self, prepare=fold)
            return
        with head_temperature.folded(find_head(model)[1] if temperature else None, temperature):
            self.save_model()

    def _augmentation_seed(self) -> int:
        """One seed per (run seed, optimizer step, micro-batch, rank): augmentation is a pure
        function of where training is, so resuming mid-epoch (after SIGTERM) draws the same
        crops and mixes as a run that never stopped."""
        step = self.state.global_step
        self._micro = self._micro + 1 if getattr(self, "_micro_step", None) == step else 0
        self._micro_step = step
        seed = ((self.args.seed * 1_000_003 + step) * 1_009 + self._micro) * 101 + self.args.process_index
        return seed % 2**63  # torch.manual_seed's range

    def create_optimizer(self, model=None):
        """The Trainer's optimizer (``training.optim`` and its arguments), given the parameter
        groups of ``model.layer_decay`` when the recipe sets it."""
        if self.optimizer is not None or self.layer_decay is None:
            return super().create_optimizer(model)
        from finetune.models import layer_decay

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
        """The model's logits on the transformed batch, and finetune's loss on them.

        Training: ``losses.classification_loss`` with the batch's targets (soft rows after
        mixup/CutMix), the class weights and ``label_smoothing_factor`` (applied there once,
        also to mixed targets), mixed with the distillation term when there is a teacher
        (``Teacher.loss``: (1 − α) × that loss + α × the distillation loss); for a multi-label
        model ``losses.multi_label_loss`` with the multi-hot (or mixed) rows and the positive
        weights. Evaluation: ``losses.evaluation_loss``, plain cross-entropy with the true
        classes (binary cross-entropy with the multi-hot rows). Either is a mean over the micro-batch, which the Trainer
        divides by the accumulation steps (``compat.loss_is_a_batch_mean``), so
        ``num_items_in_batch`` is not needed.
        """
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        bad = inputs.pop("bad", None)  # a streamed batch's unreadable images
        training = model.training
        if self.stream is not None and training:
            self.stream.read(len(labels) + len(bad or []))
        if bad and self.stream is not None:
            self.stream.bad.add(bad)
        seed = self._augmentation_seed() if training else None
        pixels = self.batch_transform(inputs["pixel_values"], train=training, seed=seed)
        targets = labels
        mix = self.batch_transform.mix if training else None
        if mix is not None:
            if self.num_classes is None:
                raise ValueError("mixup/CutMix needs the number of classes: the model has no config.num_labels")
            pixels, targets = mix(pixels, labels, self.num_classes, seed=seed)
        inputs["pixel_values"] = pixels
        if not training and self.tta is not None:
            if self.multi_label and self.tta.activation is SOFTMAX:
                # A softmax over classes that are not exclusive would score something else.
                raise ValueError("a multi-label model's test-time views are averaged as sigmoids: give the "
                                 "TestTimeAugmentation the SIGMOID activation")
            # The averaged prediction over the views, as logits (log-probabilities).
            logits, before = self.tta.scores(lambda views: _logits(model(**{**inputs, "pixel_values": views})), pixels)
            # With a temperature folded in, the average before it too (MetricAccumulator's
            # uncalibrated_output): the Trainer gathers it beside the logits.
            outputs = {"logits": logits} if before is None else {"logits": logits, "uncalibrated_logits": before}
        else:
            outputs = model(**inputs)
            logits = _logits(outputs)
        if training:
            loss_of = losses.multi_label_loss if self.multi_label else losses.classification_loss
            loss = loss_of(logits, targets, self.class_weights, self.args.label_smoothing_factor)
            if self.teacher is not None:
                # Distillation: the teacher's logits for the same augmented (and mixed) batch,
                # in the autocast the accelerator runs the student in.
                with self.accelerator.autocast():
                    teacher_logits = self.teacher.logits(pixels)
                loss = self.teacher.loss(loss, logits, teacher_logits)
        else:
            # Evaluation scores the student alone, with the plain loss.
            loss = losses.evaluation_loss(logits, labels, self.multi_label)
        if not return_outputs:
            return loss
        # As a model given labels returns them: the loss first (the Trainer's prediction_step
        # takes the logits from what follows it).
        if isinstance(outputs, dict):
            outputs["loss"] = loss
        else:
            outputs = (loss, *outputs)
        return loss, outputs


def _logits(outputs: Any) -> torch.Tensor:
    """The logits of a model's output (a ModelOutput or a tuple)."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs[0]
