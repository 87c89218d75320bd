"""The cached-feature linear probe's training: the head fitted by the Trainer or by L-BFGS on the
features that :mod:`finetune.probe.features` computes once, saved as a full model.

``probe_setup`` gives the training run a Trainer class and a batch transform for the probe; the
Trainer subclass computes the features on first use (train, validation, eval), trains the head
with the recipe's optimizer and schedule, or fits it as an L2-regularised multinomial (for
multi-label data, one-vs-rest) logistic regression by full-batch L-BFGS
(``model.probe_solver: lbfgs``, :mod:`finetune.probe.logistic`), and saves the whole model
(frozen backbone plus trained head), so the output folder is like any other run's.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, default_data_collator
from transformers.trainer_utils import TrainOutput

from finetune import data
from finetune.data import multi_label
from finetune.models import temperature as head_temperature
from finetune.models.classifier import LoadedModel, ModelError
from finetune.probe.engine import FeatureRuntime
from finetune.probe.features import (
    FEATURE_CACHE_OFF_HINT,
    FeatureDataset,
    FeatureStats,
    HeadModel,
    compute_features,
    find_head,
)
from finetune.probe.logistic import LogisticFit, fit_logistic, mean_average_precision, reported_loss
from finetune.recipe import ModelConfig
from finetune.utils import progress
from finetune.utils.files import write_json

logger = logging.getLogger("finetune")

#: TrainingArguments that shape the SGD loop, which the L-BFGS head does not run.
LBFGS_UNUSED = (
    "learning_rate", "num_train_epochs", "max_steps", "optim", "optim_args", "lr_scheduler_type",
    "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps", "weight_decay", "per_device_train_batch_size",
    "gradient_accumulation_steps", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "label_smoothing_factor", "load_best_model_at_end", "metric_for_best_model",
    "early_stopping_patience", "early_stopping_threshold",
)
AUGMENT_NOTE = (
    "linear probe on cached features: the backbone's features are computed once from the "
    "un-augmented images, so data.augment ({augment}) does not apply; set model.feature_cache "
    "to false to train with augmentation"
)


# --------------------------------------------------------------------------- trainer


def probe_setup(
    loaded: LoadedModel,
    transform: data.BatchTransform,
    data_report: dict[str, Any],
    report_path: str | Path | None,
    model_cfg: ModelConfig,
    training: dict[str, Any],
    shared: Any = None,
    scope: tuple | None = None,
):
    """For the run's one branch: (the Trainer class, the batch transform it will really use).

    ``shared`` (``finetune.training.shared.SharedWork``, when a study or search runs) keeps the
    features of each decoded split for the next run of the same ``scope``.

    Fails (one line, with the fix) when the strategy trains anything besides the final
    Linear, because cached features could not train it. When the recipe asks for
    augmentation, it says once in the log that augmentation does not apply, and adds that to
    the data report's notes (rewriting ``report_path``, since the training run has written
    the report by then). It returns a transform without augmentation, so later log lines
    describe what really happens. With ``model.probe_solver: lbfgs`` it says so, and names
    the ``training`` keys the recipe set that the L-BFGS fit does not use.
    """
    head_name, head = find_head(loaded.model)
    head_params = {f"{head_name}.{p}" for p, _ in head.named_parameters()}
    others = [n for n, p in loaded.model.named_parameters() if p.requires_grad and n not in head_params]
    if others:
        raise ModelError(
            f"model.feature_cache: the linear probe also trains {', '.join(others[:3])}"
            f"{' …' if len(others) > 3 else ''}, outside the final Linear layer; {FEATURE_CACHE_OFF_HINT}"
        )
    if transform.augments:
        from accelerate import PartialState

        note = AUGMENT_NOTE.format(augment=transform.describe())
        if PartialState().is_main_process:  # one line, not one per process
            logger.warning("%s", note)
        notes = data_report.setdefault("notes", [])
        if note not in notes:
            notes.append(note)
        if report_path is not None and PartialState().is_main_process:
            write_json(Path(report_path), data_report)
        transform = transform.without_augmentation()
    if model_cfg.probe_solver == "lbfgs":
        from accelerate import PartialState

        unused = [k for k in training if k in LBFGS_UNUSED]
        if PartialState().is_main_process:
            logger.info("training: the head is fitted by L-BFGS, λ among %s", model_cfg.probe_l2)
            if unused:
                logger.warning(
                    "training: %s do(es) not apply with model.probe_solver 'lbfgs' (no SGD loop runs)",
                    ", ".join(unused),
                )
    trainer_class = functools.partial(
        FeatureProbeTrainer,
        solver=model_cfg.probe_solver,
        l2=list(model_cfg.probe_l2),
        max_iter=model_cfg.probe_max_iter,
        runtime=model_cfg.feature_runtime,
        shared=shared,
        scope=scope,
    )
    return trainer_class, transform


class FeatureProbeTrainer(Trainer):
    """A Trainer for the head alone, on features that the frozen backbone computes once.

    It takes the same arguments as ``finetune.training.trainer.FinetuneTrainer``, so the
    training run only swaps the class: ``model`` is the full model, and the datasets are the
    decoded uint8 splits (bare or in ``data.FastRows``). Any decoded split given to
    ``evaluate``/``predict`` later (for example the eval split) is mapped to its features,
    computed on first use and cached.

    Checkpoints hold the head alone (the Trainer's own saving of a model that is not a
    ``PreTrainedModel``): the backbone never changes, and would add its whole size to every
    checkpoint. :meth:`save_final_model` saves what inference loads.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        args: Any,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        batch_transform: data.BatchTransform,
        solver: str = "trainer",
        l2: list[float] | None = None,
        max_iter: int = 1000,
        runtime: str = "auto",
        shared: Any = None,
        scope: tuple | None = None,
        **kwargs: Any,
    ) -> None:
        self.solver, self.l2, self.max_iter = solver, list(l2 or [0.0]), max_iter
        self._shared, self._scope = shared, scope
        self.feature_runtime = FeatureRuntime(runtime)
        self.full_model = model
        self.batch_transform = batch_transform
        self.feature_stats = FeatureStats()
        self._cache: list[tuple[Any, FeatureDataset]] = []
        # Run the backbone where the Trainer would have, in the same precision.
        self._feature_args = args
        self._device = args.device
        _, head = find_head(model)
        model.to(self._device)
        train_features = self.features_for(train_dataset) if train_dataset is not None else None
        eval_features = self.features_for(eval_dataset) if eval_dataset is not None else None
        kwargs["data_collator"] = default_data_collator
        with warnings.catch_warnings():
            # The Trainer says it cannot smooth a multi-label model's targets; HeadModel does.
            warnings.filterwarnings("ignore", message="Label smoothing is not compatible with multi-label")
            super().__init__(
                model=HeadModel(model, head), args=args, train_dataset=train_features, eval_dataset=eval_features,
                **kwargs,
            )
        if self.model.multi_label:
            # The Trainer's label smoother takes a softmax over the classes; a multi-label
            # head smooths its binary targets itself (HeadModel), in training only.
            self.model.smoothing = self.args.label_smoothing_factor
            self.label_smoother = None

    def features_for(self, dataset: Any) -> FeatureDataset:
        """The cached features of a decoded split (one backbone pass per split, ever)."""
        if isinstance(dataset, FeatureDataset):
            return dataset
        if isinstance(dataset, data.FastRows):
            dataset = dataset.dataset  # the decoded split itself: it keys the cache
        for known, features in self._cache:
            if known is dataset:
                return features
        shared = self._shared.features_of(self._scope, dataset) if self._shared is not None else None
        if shared is not None:
            if self._feature_args.process_index == 0:
                logger.info("feature cache: %d images' features from an earlier run of this study or search", len(shared))
            self._cache.append((dataset, shared))
            return shared
        start = time.perf_counter()
        features = compute_features(
            self.full_model,
            dataset,
            self.batch_transform,
            device=self._device,
            batch_size=self._feature_args.per_device_eval_batch_size,
            args=self._feature_args,
            runtime=self.feature_runtime,
        )
        seconds = time.perf_counter() - start
        self.feature_stats.images += len(features)
        self.feature_stats.seconds += seconds
        if self._feature_args.process_index == 0:
            logger.info(
                "feature cache: the frozen backbone ran once over %d images in %.1f s (%.0f images/s, %d "
                "process(es); %s); the head trains on %d-dim features",
                len(features), seconds, len(features) / max(seconds, 1e-9), self._feature_args.world_size,
                self.feature_runtime.chosen, features.features.shape[-1],
            )
        self._cache.append((dataset, features))
        if self._shared is not None:
            self._shared.keep_features(self._scope, dataset, features)
        return features

    def train(self, *args: Any, **kwargs: Any):
        result = self._fit_lbfgs() if self.solver == "lbfgs" else super().train(*args, **kwargs)
        # The time that replaced the backbone's per-step forward passes, next to train_runtime.
        result.metrics["feature_cache_images"] = self.feature_stats.images
        result.metrics["feature_cache_runtime"] = round(self.feature_stats.seconds, 4)
        return result

    def _fit_lbfgs(self) -> TrainOutput:
        """The head by L-BFGS (``model.probe_solver: lbfgs``), in place of the Trainer's loop.

        Each λ of ``model.probe_l2`` is fitted, strongest first, each warm-started from the
        previous solution (the regularisation path); with several, the best accuracy on the
        validation piece's features wins (a multi-label head: the best mAP, over the classes
        with a positive there), ties going to the lower validation loss. The fit
        is deterministic, and every process fits the same features, but rank 0's head is
        broadcast anyway so that all ranks evaluate the same weights.
        """
        start = time.perf_counter()
        linear = self.model.linear
        device = linear.weight.device
        train, validation = self.train_dataset, self.eval_dataset
        x, y = train.features.to(device), train.labels.to(device)
        num_classes = linear.out_features
        multi = multi_label.is_multi_label(self.model.config)
        score_name = "map" if multi else "accuracy"
        fits: list[LogisticFit] = []
        init: tuple[torch.Tensor, torch.Tensor] | None = None
        strengths = sorted(set(self.l2), reverse=True)
        # One bar over the λ values; the iterations of the running fit show beside it.
        bar = progress.bar(self.args, total=len(strengths), desc="L-BFGS head", unit="fit")
        for l2 in strengths:

            def show(iteration: int, l2: float = l2) -> None:
                bar.set_postfix_str(f"λ {l2:g}, iteration {iteration}/{self.max_iter}", refresh=False)
                bar.update(0)  # redraws at tqdm's own pace (mininterval), not at every evaluation

            fit = fit_logistic(x, y, num_classes, l2, self.max_iter, init, on_iteration=show, multi_label=multi)
            bar.update(1)
            init = (fit.weight, fit.bias)
            if validation is not None and len(validation):
                with torch.no_grad():
                    logits = torch.addmm(fit.bias, validation.features.to(device).float(), fit.weight.t())
                    target = validation.labels.to(device)
                    if multi:
                        target = target.float()
                        fit.validation_score = mean_average_precision(target.cpu().numpy(), logits.cpu().numpy())
                    else:
                        fit.validation_score = float((logits.argmax(-1) == target).float().mean())
                    fit.validation_loss = reported_loss(logits, target, multi)
            fits.append(fit)
            entry = {"probe_l2": l2, "probe_iterations": fit.iterations, "train_loss": round(fit.train_loss, 6)}
            if fit.validation_loss is not None:
                if fit.validation_score is not None:
                    entry[f"validation_{score_name}"] = fit.validation_score
                entry["validation_loss"] = round(fit.validation_loss, 6)
            self.state.log_history.append(entry)  # no "epoch": the curves plot leaves these out
            if self.args.process_index == 0:
                logger.info("L-BFGS head: %s", ", ".join(f"{k} {v:g}" for k, v in entry.items()))
        bar.close()
        # A validation piece whose images have no label at all (multi-label) gives no mAP: the
        # validation loss alone chooses then.
        scored = [f for f in fits if f.validation_loss is not None]
        best = (
            max(scored, key=lambda f: (f.validation_score if f.validation_score is not None else 0.0, -f.validation_loss))
            if scored else fits[0]
        )
        with torch.no_grad():
            linear.weight.copy_(best.weight.to(linear.weight.dtype))
            linear.bias.copy_(best.bias.to(linear.bias.dtype))
        if self.args.world_size > 1:
            from accelerate.utils import broadcast

            broadcast(linear.weight.data, from_process=0)
            broadcast(linear.bias.data, from_process=0)
        seconds = time.perf_counter() - start
        steps = sum(f.iterations for f in fits)
        self.state.global_step = self.state.max_steps = steps
        metrics = {
            "train_runtime": round(seconds, 4),
            "train_samples_per_second": round(len(train) / max(seconds, 1e-9), 3),
            "train_loss": best.train_loss,
            "probe_solver": "lbfgs",
            "probe_regression": "one-vs-rest" if multi else "multinomial",
            "probe_l2": best.l2,
            "probe_l2_tried": ", ".join(f"{v:g}" for v in sorted(set(self.l2))),  # a metric must print as one value
            "probe_iterations": best.iterations,
        }
        if best.validation_score is not None:
            metrics[f"probe_validation_{score_name}"] = best.validation_score
        if self.args.process_index == 0:
            logger.info(
                "L-BFGS head: λ = %g chosen%s; %d iterations in all, %.1f s",
                best.l2, " on the validation piece" if len(scored) > 1 else "", steps, seconds,
            )
        self.state.log_history.append({"step": steps, **metrics})
        return TrainOutput(steps, best.train_loss, metrics)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"):
        if eval_dataset is not None and not isinstance(eval_dataset, dict):
            eval_dataset = self.features_for(eval_dataset)
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"):
        return super().predict(self.features_for(test_dataset), ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def save_final_model(self, output_dir: str | None = None, temperature: float | None = None) -> None:
        """The full model (frozen backbone + trained head), the image processor and the
        training arguments, as ``save_model`` writes them for any other run; ``temperature``
        folded into the saved head (the live one is put back afterwards)."""
        from transformers.trainer import TRAINING_ARGS_NAME

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        logger.debug("saving the full model (frozen backbone + trained head) to %s", output_dir)
        # The head's Linear is the full model's own module, so this holds the trained head.
        head = find_head(self.full_model)[1] if temperature else None
        with head_temperature.folded(head, temperature):
            self.full_model.save_pretrained(output_dir, is_main_process=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
