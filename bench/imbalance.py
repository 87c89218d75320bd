"""Class imbalance: a long-tailed CIFAR-10 subset trained three ways, with each class's recall on the balanced test split.

    python bench/imbalance.py [--ratio 10] [--largest 500] [--work outputs/imbalance] [--json results.json]

The subset keeps ``largest × ratio^(−i/9)`` training images of class i (CIFAR-10-LT's
exponential profile: 500, 387, 300, ... 50 with the defaults, 2,044 images in all), written
as an image folder beside 1,000 test images (100 per class, the first of each class in the
official test split). The same recipe (built-in EfficientNet-Lite0, 96 px, full fine-tune,
3 epochs) then runs three times through the real command line, as users run it:

- ``plain``: the loss and the sampler as usual;
- ``class_weights``: ``--set data.class_weights=balanced`` (the loss weights class c by
  n / (10 × n_c), from the training piece);
- ``sampler``: ``--set data.sampler=balanced`` (each draw picks a class with equal chance).

Each run's ``eval_report.json`` gives the per-class recall; the table shows it with the
accuracy and the macro recall (the mean of the recalls, what imbalance hurts). About
2 minutes per run on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CIFAR10 = ROOT.parent / "shared" / "datasets" / "cifar10"
VARIANTS = {
    "plain": [],
    "class_weights": ["--set", "data.class_weights=balanced"],
    "sampler": ["--set", "data.sampler=balanced"],
}


def counts(largest: int, ratio: float, classes: int = 10) -> list[int]:
    return [max(1, round(largest * ratio ** (-i / (classes - 1)))) for i in range(classes)]


def write_subset(folder: Path, largest: int, ratio: float, seed: int = 0) -> list[int]:
    """The long-tailed train split and the balanced test split as an image folder; returns
    the training images per class."""
    import numpy as np
    from datasets import ClassLabel, Image, load_dataset

    raw = load_dataset(str(CIFAR10))
    features = raw["train"].features
    image = next(k for k, f in features.items() if isinstance(f, Image))
    label = next(k for k, f in features.items() if isinstance(f, ClassLabel))
    names = features[label].names
    wanted = counts(largest, ratio, len(names))
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", wanted), ("test", [100] * len(names))):
        labels = np.asarray(raw[split][label])
        for c, name in enumerate(names):
            rows = np.flatnonzero(labels == c)
            rows = rng.permutation(rows)[: per_class[c]] if split == "train" else rows[: per_class[c]]
            out = folder / split / name
            out.mkdir(parents=True, exist_ok=True)
            for i, row in enumerate(sorted(rows.tolist())):
                raw[split][int(row)][image].save(out / f"{i:04d}.png")
    return wanted


def recipe(folder: Path, out: Path) -> dict:
    return {
        "description": "Long-tailed CIFAR-10 subset (bench/imbalance.py): EfficientNet-Lite0, 96 px, full fine-tune.",
        "model": {"name_or_path": "builtin:efficientnet-lite0", "strategy": "full"},
        "data": {"dataset": str(folder), "eval_split": "test", "validation_fraction": 0.1, "image_size": 96,
                 "augment": {"crop_scale": [0.6, 1.0], "hflip": True}},
        "training": {"num_train_epochs": 3, "learning_rate": 0.001, "weight_decay": 0.05, "warmup_steps": 0.1,
                     "lr_scheduler_type": "cosine", "per_device_train_batch_size": 64, "seed": 42},
        "metrics": ["accuracy", "recall"],
        "output_dir": str(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=10.0, help="largest class / smallest class")
    parser.add_argument("--largest", type=int, default=500, help="training images of the largest class")
    parser.add_argument("--work", default="outputs/imbalance")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    folder = work / f"cifar10-lt-{args.largest}-{args.ratio:g}"
    if not (folder / "test").is_dir():
        print("per class:", write_subset(folder, args.largest, args.ratio), flush=True)
    path = work / "recipe.json"
    path.write_text(json.dumps(recipe(folder, work / "runs" / "plain"), indent=2))
    results = {}
    for name, extra in VARIANTS.items():
        out = work / "runs" / name
        command = [sys.executable, str(ROOT / "finetune" / "run.py"), "--recipe", str(path),
                   "--set", f"output_dir={out}", "--overwrite", *extra]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        report = json.loads((out / "eval_report.json").read_text())
        results[name] = {
            "accuracy": report["accuracy"],
            "macro_recall": sum(r["recall"] for r in report["per_class"].values()) / len(report["per_class"]),
            "recall": {c: r["recall"] for c, r in report["per_class"].items()},
        }
    classes = list(results["plain"]["recall"])
    print("\n| class | " + " | ".join(results) + " |\n|---|" + "---|" * len(results))
    for c in classes:
        print(f"| {c} | " + " | ".join(f"{r['recall'][c]:.2f}" for r in results.values()) + " |")
    for key in ("macro_recall", "accuracy"):
        print(f"| **{key.replace('_', ' ')}** | " + " | ".join(f"{r[key]:.3f}" for r in results.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
