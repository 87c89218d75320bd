"""The linear probe's cached features: the frozen backbone's one pass, and the head alone that trains on them.

With ``model.strategy: linear_probe`` only the classification head learns, and the
backbone is frozen in eval mode, so its output for an image never changes during training.
Running it on every image in every epoch (and again for every per-epoch evaluation) repeats
the same work. Here the backbone runs ONCE over the decoded train, validation and eval
images. The head then trains on the cached features, with the recipe's own Trainer
settings: learning rate, epochs, batch size, seed, optimizer, scheduler, per-epoch
evaluation and ``finetune.evaluation.metrics.MetricAccumulator``.

What the head sees: the input of the model's last ``nn.Linear``, taken with a forward hook
while the whole model runs in eval mode (``finetune.models.classifier.head_parameter_names``
names the head). This covers the pooling, flatten or dropout that some heads apply before
their Linear (HF ResNet, timm), because those run inside the model exactly as they do at
inference. For every batch the pass checks that the Linear's output *is* the model's logits.
If it is not, something runs after the Linear (for example DeiT's averaged distillation
head), and the run stops with a one-line error that says to set ``model.feature_cache`` to
false.

What is saved: the full model (frozen backbone plus trained head) with ``save_pretrained``
and the image processor. That is the same format as any other run, so ``pipeline()`` and
``finetune eval`` load it unchanged. Per-epoch checkpoints hold only the head, because the
backbone never changes and would add its whole size to every checkpoint for nothing;
resuming and ``load_best_model_at_end`` work on those head-only checkpoints.

Two limits, reported in the log and in data_report.json's notes:

- Augmentation does not apply. The features come from the un-augmented decoded images. A
  recipe that asks for crops or flips, and wants them, sets ``model.feature_cache: false``;
  that selects the per-step path (backbone forward every step, augmentation applied).
- Dropout that a model applies before its head in training mode is skipped, because the
  features are taken in eval mode. None of the supported families (HF ViT/DeiT/ResNet/
  ConvNeXt/Swin, timm with the default drop rate) has such dropout.

What runs the pass: PyTorch for the first batch (where the check above happens), then, as
``model.feature_runtime`` chooses, PyTorch or ONNX Runtime on a CPU
(:mod:`finetune.probe.engine`).

With several processes (``accelerate launch``), every rank computes the features of its
own share of the images (``PartialState.split_between_processes``), and the shares are
gathered, so the work is split across ranks instead of repeated on each one.
"""


from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from finetune import data
from finetune.data import multi_label
from finetune.models.classifier import ModelError, head_parameter_names
from finetune.probe.engine import FeatureRuntime
from finetune.utils import progress

logger = logging.getLogger("finetune")

FEATURE_CACHE_OFF_HINT = "set model.feature_cache to false to train the head with the backbone running every step"


# ------------------------------------------------------------------------------ head


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classification head: the model's last ``nn.Linear`` (as ``head_parameter_names`` says)."""
    names = head_parameter_names(model, [])
    if not names:
        raise ModelError(f"model.feature_cache: this model has no Linear classification head; {FEATURE_CACHE_OFF_HINT}")
    module_name = names[0].rsplit(".", 1)[0]
    head = model.get_submodule(module_name)
    assert isinstance(head, nn.Linear)
    return module_name, head


class HeadModel(nn.Module):
    """The head alone, fed the cached features. It shares its ``nn.Linear`` with the full model,
    so training it trains the full model's head in place.

    The loss is the full model's own ``loss_function`` (the same problem-type rules as a
    forward pass of the full model), so both paths optimise the same objective. A multi-label
    model's is the binary cross-entropy with the multi-hot rows, averaged over the N × C pairs
    (``finetune.training.losses.multi_label_loss``), smoothed in training by
    :attr:`smoothing` as timm smooths it (the Trainer's own label smoother is a softmax's).
    """

    def __init__(self, full_model: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.linear = head
        # A plain attribute, not a submodule: the Trainer must see only the head's parameters.
        self.__dict__["_full_model"] = full_model
        #: Label smoothing of a multi-label model's training loss (0: none; never in evaluation).
        self.smoothing = 0.0

    @property
    def multi_label(self) -> bool:
        config = getattr(self._full_model, "config", None)
        return config is not None and multi_label.is_multi_label(config)

    @property
    def config(self) -> Any:
        """The full model's config: the Trainer reads it (``problem_type``, when label smoothing
        is on) from the model it is given, which here stands in for the full model."""
        return getattr(self._full_model, "config", None)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        logits = self.linear(features)
        loss = None
        if labels is not None:
            full = self._full_model
            loss_function = getattr(full, "loss_function", None)
            if self.multi_label:
                target = labels.float()
                smoothing = self.smoothing if self.training else 0.0
                if smoothing:
                    target = target * (1.0 - smoothing) + smoothing / logits.shape[-1]
                loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
            elif loss_function is not None and getattr(full, "config", None) is not None:
                loss = loss_function(labels, logits, full.config)
            else:
                loss = nn.functional.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


# -------------------------------------------------------------------------- features


class FeatureDataset(torch.utils.data.Dataset):
    """Cached features and labels in memory, in the order of the decoded split they came from."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[index], "labels": self.labels[index]}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        # One gather per batch rather than one indexing call per row.
        index = torch.as_tensor(indices, dtype=torch.long)
        feats, labels = self.features[index], self.labels[index]
        return [{"features": f, "labels": y} for f, y in zip(feats, labels)]


@dataclass
class FeatureStats:
    """How long the one backbone pass took, for the log and train_results.json."""

    images: int = 0
    seconds: float = 0.0


class _Capture:
    """Forward hook on the head: keeps the Linear's input (the features) and output."""

    def __init__(self) -> None:
        self.inputs: torch.Tensor | None = None
        self.output: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.inputs, self.output = args[0], output


def _autocast(device: torch.device, args: Any) -> contextlib.AbstractContextManager:
    """The same mixed precision the Trainer would run the backbone in."""
    if args is not None and getattr(args, "bf16", False):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if args is not None and getattr(args, "fp16", False):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@torch.inference_mode()
def _features_of(
    model: nn.Module,
    head: nn.Linear,
    dataset: Any,
    transform: data.BatchTransform,
    device: torch.device,
    batch_size: int,
    args: Any = None,
    process_index: int = 0,
    desc: str = "feature pass",
    runtime: FeatureRuntime | None = None,
    total: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of every row of a decoded split, in order, on this process; with a
    progress bar in images on the main process (the Trainer's rule,
    :mod:`finetune.utils.progress`).

    PyTorch runs the first batch (it checks that the logits are the head's output); the
    ``runtime`` may then hand the rest to ONNX Runtime (:mod:`finetune.probe.engine`).
    ``total``: the split's rows over all processes, which every rank's choice is based on.
    """
    capture = _Capture()
    handle = head.register_forward_hook(capture)
    loader = torch.utils.data.DataLoader(
        data.FastRows.wrap(dataset),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=data.collate,
        num_workers=getattr(args, "dataloader_num_workers", 0) if args is not None else 0,
        pin_memory=device.type == "cuda",
    )
    lower_precision = args is not None and (getattr(args, "bf16", False) or getattr(args, "fp16", False))
    try_onnx = (
        runtime is not None and runtime.runner is None
        and runtime.wants_onnx(device, len(dataset) if total is None else total, lower_precision)
    )
    feats, labels = [], []
    bar = progress.bar(args, total=len(dataset), desc=desc, process_index=process_index)
    try:
        for batch in loader:
            pixels = transform(batch["pixel_values"].to(device, non_blocking=True), train=False)
            if runtime is not None and runtime.runner is not None:
                features = runtime.runner(pixels)
            else:
                with _autocast(device, args):
                    logits = model(pixel_values=pixels).logits
                if capture.output is None or capture.inputs is None or not torch.equal(capture.output, logits):
                    raise ModelError(
                        "model.feature_cache: this model's logits are not the output of its last Linear layer "
                        f"(something runs after the head), so cached features cannot reproduce them; {FEATURE_CACHE_OFF_HINT}"
                    )
                features = capture.inputs.detach().float().cpu()
                if try_onnx:
                    try_onnx = False
                    handle.remove()  # the export traces the model: keep this hook out of it
                    checked = runtime.start(model, head, pixels, features, batch_size)
                    handle = head.register_forward_hook(capture)
                    if checked is not None:
                        features = checked
            feats.append(features)
            labels.append(batch["labels"].cpu())
            capture.inputs = capture.output = None
            bar.update(len(batch["labels"]))
    finally:
        bar.close()
        handle.remove()
    if not feats:
        config = getattr(model, "config", None)
        if config is not None and multi_label.is_multi_label(config):
            return torch.zeros(0, head.in_features), torch.zeros(0, head.out_features)
        return torch.zeros(0, head.in_features), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def compute_features(
    model: nn.Module,
    dataset: Any,
    transform: data.BatchTransform,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 64,
    args: Any = None,
    runtime: FeatureRuntime | None = None,
) -> FeatureDataset:
    """Run the frozen backbone once over a decoded split: its head's input features and labels.

    Across several processes each rank runs its share of the rows
    (``split_between_processes``, padded so every share has the same length) and the shares
    are all-gathered, then the padding is dropped, so every rank ends up with all features in
    dataset order. ``runtime`` (:mod:`finetune.probe.engine`) chooses the engine; None: PyTorch.
    """
    from accelerate import PartialState
    from accelerate.utils import gather

    state = PartialState()
    device = torch.device(device) if device is not None else state.device
    _, head = find_head(model)
    was_training = model.training
    model.eval()
    try:
        n = len(dataset)
        world = state.num_processes
        if world == 1 or n == 0:
            feats, labels = _features_of(
                model, head, dataset, transform, device, batch_size, args, state.process_index, runtime=runtime
            )
            return FeatureDataset(feats, labels)
        with state.split_between_processes(list(range(n)), apply_padding=True) as shard:
            mine = dataset.select(shard) if len(shard) else dataset.select([])
            # The bar (rank 0's) counts rank 0's share; the others run theirs alongside.
            desc = f"feature pass (rank 0's share of {world})"
            feats, labels = _features_of(
                model, head, mine, transform, device, batch_size, args, state.process_index, desc, runtime, total=n
            )
        # Every share has `per` rows after padding; rank r's real rows are the first
        # `base + (r < extra)` of its share (split_between_processes' own arithmetic).
        base, extra = divmod(n, world)
        per = base + (1 if extra else 0)
        all_feats = gather(feats.to(state.device)).cpu()
        all_labels = gather(labels.to(state.device)).cpu()
        keep = torch.cat([torch.arange(r * per, r * per + base + (1 if r < extra else 0)) for r in range(world)])
        return FeatureDataset(all_feats[keep], all_labels[keep])
    finally:
        model.train(was_training)
