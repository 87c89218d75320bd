"""Knowledge distillation, measured: a teacher, a student trained alone, the same student distilled.

    python bench/distill.py                          # digits: offline, CPU, a few minutes
    python bench/distill.py --scenario cifar10       # Lite2 → Lite0 on 2,000 CIFAR-10 images
    python bench/distill.py --scenario cifar10 --image-size 128 --json /tmp/distill.json

Three runs of the real code (``finetune.train.train`` on recipes built with
``recipe.recipe_from_dict``), one after the other, then one table:

1. the teacher, fine-tuned on the training images;
2. the student, trained alone on the same images with the student recipe;
3. the same student recipe with ``model.teacher`` = run 1's output folder (α, T below).

Runs 2 and 3 differ in the teacher alone: same images, seed, augmentation, epochs and
optimizer. Each model is scored once, at the end of its run, on the eval split (the
``eval_accuracy`` of its ``eval_results.json``). The table also gives each model's
parameters, the size of its ``model.safetensors``, and its CPU latency at batch 1 (the
median of repeated forward passes at its own input size, after warm-up, on ``--threads``
intra-op threads).

Scenarios:

digits   teacher: ``recipes/quickstart.json`` (the built-in EfficientNet-Lite0, fully
         fine-tuned, 64 px). Student: timm's MobileNetV3-Small-0.5 (0.58 M parameters, about
         a sixth of Lite0's) from random weights, as no small pretrained model is available
         offline, built from its config as a TimmWrapper checkpoint; the quickstart recipe
         otherwise, with the student's own epochs, learning rate (``STUDENT_TRAINING``) and
         input size (32 px).
cifar10  teacher: ``builtin:efficientnet-lite2`` (extra ``models``), student:
         ``builtin:efficientnet-lite0``, both fully fine-tuned on 2,000 training images
         (class-balanced, seeded) of the CIFAR-10 copy at ``../shared/datasets/cifar10``, and
         scored on 1,000 of its test images. Each model at its native size (260 / 224 px)
         unless ``--image-size`` sets one for all three (for a CPU: 224-260 px makes the
         three runs take hours on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CIFAR10 = ROOT.parent / "shared" / "datasets" / "cifar10"
STUDENT_ARCH = "mobilenetv3_small_050"
#: The digits student's schedule: from random weights it needs more steps than the
#: pretrained teacher's 4 epochs, and a larger learning rate.
STUDENT_TRAINING = {"num_train_epochs": 8, "learning_rate": 0.003}
#: The digits student's input: the images are 8×8, and 32 px costs a quarter of the
#: teacher's 64 px (the teacher gets the student's batch resized to its 64 px).
STUDENT_IMAGE_SIZE = 32
#: The CIFAR-10 scenario's recipe for all three runs.
CIFAR_TRAINING = {
    "num_train_epochs": 5,
    "learning_rate": 0.001,
    "weight_decay": 0.01,
    "warmup_steps": 0.1,
    "per_device_train_batch_size": 32,
    "lr_scheduler_type": "cosine",
    "seed": 42,
}


def make_student(path: Path) -> Path:
    """A randomly initialised MobileNetV3-Small-0.5 saved as a TimmWrapper checkpoint, with
    timm's preprocessing for it (ImageNet mean and std) in its config."""
    import timm
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    if (path / "model.safetensors").is_file():
        return path
    reference = timm.create_model(STUDENT_ARCH, pretrained=False)
    pretrained_cfg = {k: v for k, v in reference.pretrained_cfg.items() if k not in ("url", "hf_hub_id", "tag", "file")}
    config = TimmWrapperConfig(
        architecture=STUDENT_ARCH, pretrained_cfg=pretrained_cfg, num_features=reference.num_features, num_labels=10,
    )
    torch.manual_seed(0)
    TimmWrapperForImageClassification(config).save_pretrained(path)
    return path


def recipes(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """The teacher's and the student's recipes (the distilled run adds the teacher)."""
    if args.scenario == "digits":
        teacher = json.loads((ROOT / "recipes" / "quickstart.json").read_text())
        student = json.loads(json.dumps(teacher))
        student["model"]["name_or_path"] = str(make_student(work / "student-init"))
        student["training"] |= STUDENT_TRAINING
        student["data"]["image_size"] = STUDENT_IMAGE_SIZE
        student["description"] = f"bench/distill.py digits: {STUDENT_ARCH} from random weights, the quickstart recipe"
        if args.quick:
            for r in (teacher, student):
                r["training"]["num_train_epochs"] = 1
    else:
        if not CIFAR10.is_dir():
            sys.exit(f"bench/distill.py: the CIFAR-10 copy is missing at {CIFAR10} (the Hub layout of uoft-cs/cifar10)")
        data = {
            "dataset": str(CIFAR10), "eval_split": "test", "validation_fraction": 0.0,
            "max_train_samples": 2000, "max_eval_samples": 1000,
            "image_size": args.image_size, "augment": {"crop_scale": [0.6, 1.0], "hflip": True},
        }
        training = dict(CIFAR_TRAINING, num_train_epochs=1 if args.quick else CIFAR_TRAINING["num_train_epochs"])

        def recipe(model: str) -> dict[str, Any]:
            return {
                "description": f"bench/distill.py cifar10: {model}",
                "model": {"name_or_path": model, "strategy": "full"},
                "data": json.loads(json.dumps(data)), "training": dict(training), "metrics": ["accuracy"],
                "output_dir": "",
            }

        teacher, student = recipe("builtin:efficientnet-lite2"), recipe("builtin:efficientnet-lite0")
    for r in (teacher, student):
        r["expected"] = None
        if args.cpu:
            r["training"]["use_cpu"] = True
        r["training"]["disable_tqdm"] = True
    distilled = json.loads(json.dumps(student))
    distilled["model"] |= {
        "teacher": str(work / "teacher"), "distill_alpha": args.alpha, "distill_temperature": args.temperature,
    }
    out = {"teacher": teacher, "student": student, "distilled": distilled}
    for name, r in out.items():
        r["output_dir"] = str(work / name)
    return out


def run(raw: dict[str, Any]) -> float:
    """Train one recipe into a fresh folder; its wall time in seconds."""
    from finetune.recipe import recipe_from_dict
    from finetune.training import train as train_lib

    start = time.perf_counter()
    train_lib.train(recipe_from_dict(raw, "bench/distill.py"), overwrite=True)
    return time.perf_counter() - start


def measure(folder: Path, threads: int, runs: int) -> dict[str, Any]:
    """Accuracy (from the run's own final evaluation), size and batch-1 CPU latency."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from finetune.data import output_size

    results = json.loads((folder / "eval_results.json").read_text())
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    size = output_size(AutoImageProcessor.from_pretrained(folder))
    x = torch.randn(1, 3, *size)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = []
    try:
        with torch.inference_mode():
            for i in range(runs + 5):
                start = time.perf_counter()
                model(pixel_values=x)
                if i >= 5:  # the first passes warm the allocator and kernels up
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return {
        "accuracy": results["eval_accuracy"],
        "eval_images": results["eval_num_images"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "file_mb": (folder / "model.safetensors").stat().st_size / 1e6,
        "input_px": size[0],
        "latency_ms_batch1": 1000 * statistics.median(times),
    }


def table(rows: dict[str, dict[str, Any]], threads: int) -> str:
    latency = f"CPU latency, batch 1 ({threads} thread{'s' if threads > 1 else ''}, ms)"
    lines = [
        f"| model | accuracy | eval images | parameters | file (MB) | input (px) | {latency} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['accuracy']:.4f} | {r['eval_images']} | {r['parameters'] / 1e6:.2f} M | {r['file_mb']:.1f} | "
            f"{r['input_px']} | {r['latency_ms_batch1']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["digits", "cifar10"], default="digits")
    parser.add_argument("--work", type=Path, default=Path("/tmp/finetune-bench-distill"), help="output folders")
    parser.add_argument("--alpha", type=float, default=0.5, help="model.distill_alpha of the distilled run")
    parser.add_argument("--temperature", type=float, default=4.0, help="model.distill_temperature of the distilled run")
    parser.add_argument("--image-size", type=int, default=None, help="cifar10: one input size for all three runs")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for the latency measurement")
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="one epoch per run: a smoke check, not a result")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.work / args.scenario
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}", flush=True)
    walls = {name: run(raw) for name, raw in recipes(args, work).items()}
    print(f"load average after: {os.getloadavg()}", flush=True)
    labels = {
        "teacher": "teacher",
        "student": "student alone",
        "distilled": f"student distilled (α = {args.alpha:g}, T = {args.temperature:g})",
    }
    rows = {
        labels[name]: measure(work / name, args.threads, args.latency_runs) | {"train_wall_s": walls[name]}
        for name in walls
    }
    print(table(rows, args.threads))
    print("training wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()))
    if args.json is not None:
        args.json.write_text(json.dumps({"scenario": args.scenario, "threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
