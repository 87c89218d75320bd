"""A few timed steps on this machine: what a training image, a scored image and a decoded image cost at each candidate input size."""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

from finetune.recipe import ModelConfig

logger = logging.getLogger("finetune")

#: The share of the backbone's blocks a partial fine-tune trains (the small-data recipe's).
PARTIAL_SHARE = 4 / 7
#: Timed steps per measurement, after ``WARMUP`` untimed ones (the first steps of a shape
#: pay for kernel selection and allocation); the median is kept.
STEPS = 3
WARMUP = 3
#: The bounds of the cost's growth with the input side (see ``interpolate``).
MIN_EXPONENT, MAX_EXPONENT = 1.0, 3.0
#: Images per timed step on a CPU at most: the cost per image barely changes above it, and
#: the timing stays a few seconds.
CPU_BATCH = 32


@dataclass
class Timing:
    """Seconds per image on this machine, timed with the model and strategy ``finetune new`` chose."""

    device: str
    #: Input size → seconds per training image (forward, backward and optimizer step).
    train: dict[int, float] = field(default_factory=dict)
    #: Input size → seconds per scored image (forward pass, no gradient).
    infer: dict[int, float] = field(default_factory=dict)
    #: Seconds per image of the decode pass (read, decode, resize), over the pass's workers.
    decode: float = 0.0
    #: Seconds to load the model (the part of a run's start-up that depends on the model).
    load: float = 0.0
    workers: int = 1
    #: More than one convolution: a CNN (channels-last, its learning rate).
    convolutional: bool = False
    #: The backbone's blocks, and with a partial fine-tune how many of the last ones train.
    blocks: int = 0
    unfreeze_last_n: int = 0

    def describe(self) -> str:
        sizes = ", ".join(f"{s} px {self.train[s] * 1000:.1f} ms" for s in sorted(self.train))
        return (
            f"timed on {self.device}: a training image costs {sizes}; a decoded image {self.decode * 1000:.2f} ms "
            f"({self.workers} worker(s)); loading the model {self.load:.1f} s"
        )


def measure(
    model_cfg: ModelConfig, num_labels: int, sizes: list[int], batch: int, multi_label: bool = False
) -> Timing:
    """Time ``STEPS`` training steps and scoring passes of ``model_cfg`` (its strategy
    applied: a partial fine-tune's frozen layers cost no backward pass) at each size in
    ``sizes``, on random pixels, as training runs them: threads set as a run sets them,
    channels-last for a convolutional model, bf16/fp16 autocast on a GPU."""
    import torch

    from finetune.models import classifier as model_lib
    from finetune.models import strategies
    from finetune.utils import threads

    threads.configure_threads()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = [f"class_{i}" for i in range(num_labels)]
    start = time.perf_counter()
    processor = model_lib.load_processor(model_cfg, None)
    partial = model_cfg.strategy == "partial"
    # A partial fine-tune trains the same share of the blocks as the small-data Lite0 recipe,
    # so the count comes from the model, loaded whole first.
    loaded = model_lib.load_model(replace(model_cfg, strategy="full") if partial else model_cfg, names, processor)
    load = time.perf_counter() - start
    model = loaded.model
    _, stack = strategies.find_blocks(model, loaded.head) if partial or model_cfg.strategy == "full" else ("", [])
    blocks = len(stack)
    unfreeze = max(1, round(blocks * PARTIAL_SHARE)) if partial else 0
    if partial:
        model = strategies.of(replace(model_cfg, unfreeze_last_n=unfreeze)).prepare(
            model, replace(model_cfg, unfreeze_last_n=unfreeze), loaded.head).model
    model = model.to(device)
    channels_last = model_lib.is_convolutional(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    dtype = None
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None
    timing = Timing(device=_device_name(device), load=load, convolutional=channels_last, blocks=blocks,
                    unfreeze_last_n=unfreeze)
    if device.type == "cpu":
        batch = min(batch, CPU_BATCH)
    # The smallest and the largest size are timed; the others follow the power law through
    # the two (cost ∝ size^b: b ≈ 2 for a CNN, more for attention's token pairs).
    timed = sorted({min(sizes), max(sizes)})
    for size in timed:
        pixels = torch.randn(batch, 3, size, size, device=device)
        if channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        if multi_label:
            labels = torch.randint(0, 2, (batch, num_labels), device=device).float()
        else:
            labels = torch.randint(0, num_labels, (batch,), device=device)

        def train_step() -> None:
            model.train()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(pixel_values=pixels).logits.float()
            if multi_label:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
            else:
                loss = torch.nn.functional.cross_entropy(logits, labels)
            if optimizer is not None:
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        def infer_step() -> None:
            model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                model(pixel_values=pixels)

        timing.infer[size] = _seconds(infer_step, device) / batch
        # A probe on cached features trains its head alone: the feature pass is its cost.
        timing.train[size] = _seconds(train_step, device) / batch if optimizer is not None else timing.infer[size]
    for table in (timing.train, timing.infer):
        table.update({s: interpolate(table, s) for s in sizes if s not in table})
    return timing


def interpolate(measured: dict[int, float], size: int) -> float:
    """The cost at ``size`` on the power law through the two timed sizes (or the one)."""
    if len(measured) == 1:
        (known, cost), = measured.items()
        return cost * (size / known) ** 2
    (s0, c0), (s1, c1) = sorted(measured.items())[:2]
    exponent = math.log(c1 / c0) / math.log(s1 / s0) if c0 > 0 and c1 > 0 else 2.0
    # Noise on a busy machine can make the larger size look cheaper: the cost grows at least
    # with the side and at most with its cube (attention over the pixels' patches).
    exponent = min(max(exponent, MIN_EXPONENT), MAX_EXPONENT)
    return c0 * (size / s0) ** exponent


def decode_seconds(dataset, image_column: str, size: int, samples: int = 24) -> tuple[float, int]:
    """Seconds per image of the decode pass (open, EXIF-rotate, RGB, resize to ``size``) from
    up to ``samples`` images spread over ``dataset``, divided by the workers the pass uses;
    and those workers."""
    import numpy as np
    from datasets import Image

    from finetune.utils.images import open_image, to_rgb

    n = len(dataset)
    if n == 0:
        return 0.0, 1
    rows = sorted({int(i) for i in np.linspace(0, n - 1, min(n, samples))})
    column = dataset.select(rows).select_columns([image_column])
    if isinstance(column.features[image_column], Image):
        column = column.cast_column(image_column, Image(decode=False))
    values = column[image_column]
    costs = []
    for value in values:
        start = time.perf_counter()
        try:
            to_rgb(open_image(value)).resize((size, size))
        except Exception:  # noqa: BLE001 - unreadable files are the scan's to report
            continue
        costs.append(time.perf_counter() - start)
    workers = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))
    return (statistics.median(costs) / workers if costs else 0.0), workers


def _seconds(step, device: Any) -> float:
    """The median seconds of one call of ``step`` over ``STEPS`` timed calls, after a warm-up."""
    import torch

    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(STEPS):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} thread(s))"
