"""GPU benchmark: ViT-B/16 training images/s, our pipeline against synthetic data.

    bash bench/gpu.sh                      # on a machine with a GPU (prepared, one shot)
    python bench/gpu_throughput.py --cpu-smoke   # the same code path, tiny, on CPU

It measures three things:

1. OURS: ``finetune.train.train`` on real CIFAR-10 (decoded once, cached at its own 32 px and
   cropped and resized to 224 px per batch on the GPU), full fine-tune of a
   ViT-B/16 with crop and flip augmentation done on the GPU by ``data.BatchTransform``, bf16
   as ``training_arguments`` sets it on GPUs that support it. Training images/s come from the
   Trainer's own ``train_runtime``.
2. SYNTHETIC: the same model, in the same precision and with the same optimizer, fed normalised
   random tensors that are already on the GPU, in a plain training loop. This is the ceiling
   that any input pipeline can reach on this GPU; ``ours / synthetic`` is the share of it
   that we reach.
3. MFU (model FLOP utilisation): training FLOPs per image × images/s ÷ the GPU's peak dense
   bf16 FLOP/s. The training FLOPs per image (forward and backward) are counted with
   ``torch.utils.flop_counter``.

The ViT-B/16 is built from ``ViTConfig()`` with random weights. Nothing is downloaded, and
throughput does not depend on the values of the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CIFAR10 = ROOT.parent / "shared" / "datasets" / "cifar10"

#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets,
#: matched against torch.cuda.get_device_name(); --peak-tflops overrides.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10G": 70.0,
}


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific first
        if key in name:
            return value
    return None


def make_model(path: Path, smoke: bool) -> Path:
    """ViT-B/16 (ViTConfig's defaults: 768 wide, 12 layers, 224 px), or a tiny one for --cpu-smoke."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    size = 32 if smoke else 224
    config = ViTConfig(image_size=size, num_labels=10)
    if smoke:
        config = ViTConfig(
            image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_labels=10,
        )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    return path


def train_flops_per_image(model, size: int, device, dtype) -> float:
    """Forward + backward FLOPs of one image (counted on a batch of 2, then halved)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, size, size, device=device)
    labels = torch.zeros(2, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        model(pixel_values=x, labels=labels).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def run_ours(model_dir: Path, work: Path, args) -> dict[str, Any]:
    """Our pipeline end to end; images/s from the Trainer's train_runtime."""
    from finetune.recipe import recipe_from_dict
    from finetune.training.train import train

    out = work / "ours"
    recipe = recipe_from_dict(
        {
            "description": "bench: ViT-B/16 on CIFAR-10, our pipeline",
            "model": {"name_or_path": str(model_dir), "strategy": "full"},
            "data": {
                "dataset": str(CIFAR10),
                "eval_split": "test",
                "validation_fraction": 0.0,
                "max_train_samples": args.images,
                "max_eval_samples": args.eval_images,
                "augment": {"crop_scale": [0.5, 1.0], "hflip": True},
            },
            "training": {
                "num_train_epochs": args.epochs,
                "per_device_train_batch_size": args.batch_size,
                "per_device_eval_batch_size": args.batch_size,
                "learning_rate": 1e-4,
                "optim": "adamw_torch_fused" if not args.cpu_smoke else "adamw_torch",
                "save_strategy": "no",
                "logging_steps": 50,
                "report_to": "none",
                "disable_tqdm": True,
                "seed": 0,
                **({"use_cpu": True} if args.cpu_smoke else {}),
            },
            "metrics": ["accuracy"],
            "output_dir": str(out),
        }
    )
    start = time.perf_counter()
    final = train(recipe, overwrite=True)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "train_results.json").read_text())
    runtime = float(metrics["train_runtime"])
    return {
        "images_per_s": args.images * args.epochs / runtime,
        "train_runtime_s": runtime,
        "wall_s": wall,
        "eval_accuracy": float(final["eval_accuracy"]),
    }


def run_synthetic(model_dir: Path, args, device, dtype) -> dict[str, Any]:
    """The same model and optimizer on random tensors already on the device."""
    import torch
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(model_dir).to(device).train()
    size = model.config.image_size
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    flops = train_flops_per_image(model, size, device, dtype)
    return {"images_per_s": args.steps * args.batch_size / seconds, "train_flops_per_image": flops}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", "--dry-run", dest="cpu_smoke", action="store_true",
                        help="tiny ViT, few images, on CPU: checks the code path, measures nothing useful")
    parser.add_argument("--images", type=int, default=20000, help="CIFAR-10 training images (default 20000)")
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed synthetic steps")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: by GPU name)")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.images, args.eval_images, args.epochs = min(args.images, 128), min(args.eval_images, 32), 1
        args.batch_size, args.steps, args.warmup_steps = min(args.batch_size, 32), min(args.steps, 3), 1

    if not CIFAR10.is_dir():
        print(f"gpu bench: CIFAR-10 is missing: expected the Hub-layout copy at {CIFAR10}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import torch

    on_gpu = torch.cuda.is_available() and not args.cpu_smoke
    if not on_gpu and not args.cpu_smoke:
        print("gpu bench: no CUDA device; run with --cpu-smoke to check the code path on CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if on_gpu else "cpu")
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if on_gpu else None)

    work = Path(tempfile.mkdtemp(prefix="finetune-gpu-bench-"))
    model_dir = make_model(work / "vit", smoke=args.cpu_smoke)
    ours = run_ours(model_dir, work, args)
    synthetic = run_synthetic(model_dir, args, device, dtype)
    flops = synthetic["train_flops_per_image"]
    result: dict[str, Any] = {
        "device": name,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "batch_size": args.batch_size,
        "train_images": args.images,
        "epochs": args.epochs,
        "ours": ours,
        "synthetic": synthetic,
        "ours_vs_synthetic": ours["images_per_s"] / synthetic["images_per_s"],
        "train_gflops_per_image": flops / 1e9,
        "peak_tflops": peak,
    }
    if peak:
        result["mfu_ours"] = flops * ours["images_per_s"] / (peak * 1e12)
        result["mfu_synthetic"] = flops * synthetic["images_per_s"] / (peak * 1e12)
    print(json.dumps(result, indent=2))
    print(
        f"\n{name} ({result['precision']}, batch {args.batch_size}): ours {ours['images_per_s']:,.0f} img/s, "
        f"synthetic {synthetic['images_per_s']:,.0f} img/s ({100 * result['ours_vs_synthetic']:.0f}% of it); "
        f"{flops / 1e9:.1f} training GFLOP/image"
        + (f"; MFU ours {100 * result['mfu_ours']:.1f}%, synthetic {100 * result['mfu_synthetic']:.1f}% of {peak:g} TFLOP/s"
           if peak else "; MFU: peak unknown for this device, pass --peak-tflops")
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
