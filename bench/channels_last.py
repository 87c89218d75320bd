"""Channels-last against the default layout for convolutional models on the CPU, the measurement behind ``model.channels_last: null``.

    python bench/channels_last.py [--threads N] [--repeats 5]

For each model (timm's, at random weights: the layout's speed does not depend on the
values) and input size: the median time of a forward pass in inference mode over a batch of
64, and of a training step (forward, backward) over a batch of 32, with the model and its
input in the default (NCHW) layout and in channels-last (NHWC), on the machine's default
threads unless ``--threads`` sets them. The first pass of each is a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import timm
import torch

MODELS = [
    ("tf_efficientnet_lite0", 96),
    ("tf_efficientnet_lite0", 224),
    ("mobilenetv3_small_050", 64),
    ("resnet18", 224),
    ("convnext_atto", 224),
]


def _median_seconds(step, repeats: int) -> float:
    step()  # warm-up: oneDNN picks and caches its kernels on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, size: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    out = {}
    for layout, fmt in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
        model = model.to(memory_format=fmt)
        infer = torch.randn(64, 3, size, size).contiguous(memory_format=fmt)
        train = torch.randn(32, 3, size, size).contiguous(memory_format=fmt)

        def forward() -> None:
            model.eval()
            with torch.inference_mode():
                model(infer)

        def training_step() -> None:
            model.train()
            model.zero_grad(set_to_none=True)
            model(train).logsumexp(1).mean().backward()

        out[f"infer_{layout}"] = _median_seconds(forward, repeats)
        out[f"train_{layout}"] = _median_seconds(training_step, repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f}")
    print("| model | input | inference, batch 64: NCHW / NHWC (ms) | speed-up | training step, batch 32: NCHW / NHWC (ms) | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, size in MODELS:
        r = measure(name, size, args.repeats)
        print(
            f"| {name} | {size} px | {r['infer_nchw'] * 1e3:.0f} / {r['infer_nhwc'] * 1e3:.0f} | "
            f"{r['infer_nchw'] / r['infer_nhwc']:.2f}× | {r['train_nchw'] * 1e3:.0f} / {r['train_nhwc'] * 1e3:.0f} | "
            f"{r['train_nchw'] / r['train_nhwc']:.2f}× |",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
