"""The CIFAR-10 mosaic multi-label set, and the reference design adapted to multi-label, as whole commands.

    python bench/mosaic.py build [--train 2000] [--test 1000] [--seed 0] [--work DIR] [--cifar10 DIR]
    python bench/mosaic.py reference [--work DIR] [--model tiny|lite0|PATH] [--epochs 10] [--batch 64]
                                     [--lr 3e-4] [--validation-fraction 0.1] [--seed 42] [--workers 2]

The set (``build``): each 64×64 image is a 2×2 mosaic of four CIFAR-10 images
(``../shared/datasets/cifar10``) drawn at random, and is labelled with the set of their
classes (1 to 4 of the 10). Training mosaics are made of CIFAR-10 training images, test
mosaics of test images, so no test tile was ever seen in training. Seeded: the same
arguments make the same files. Written as ``WORK/mosaic-TRAIN-TEST-sSEED/data/{train,test}.parquet``
with an embedded ``Image`` column and a ``labels`` column of ``Sequence(ClassLabel)`` (the
CIFAR-10 class names), which a recipe reads with ``"data": {"dataset": "<that>/data"}``
(multi-label is found from the column; ``data.task`` may also say it). The command prints the
folder and the label statistics.

``compare`` runs, each as a whole command from the shell on the same mosaics: ours with the
built-in EfficientNet-Lite0 as a linear probe (the one-vs-rest L-BFGS head) and with the
small-data recipe's settings (``recipes/cifar10_lite0_small.json``: partial, 5 epochs), and
the reference below with the example's usual settings, all at ``--image-size`` (128: each
32-px tile at 64 px); it prints mAP, F1 and exact match on the test mosaics and the wall time:

    python bench/mosaic.py compare [--train 2000] [--test 1000] [--image-size 128]

The reference (``reference``): the Hugging Face example's design (as ``bench/streaming.py``'s
``reference``) adapted to multi-label: ``AutoModelForImageClassification`` with
``problem_type="multi_label_classification"`` (so its loss is ``BCEWithLogitsLoss`` on
multi-hot float targets), torchvision transforms on PIL images in ``set_transform``
(``RandomResizedCrop`` at the processor's size with ``--crop-scale``, flip, ``ToTensor``,
``Normalize``; evaluation ``Resize`` + ``CenterCrop``), a stacking collate function and a
plain ``Trainer``. It trains on the same training piece as finetune (``data.make_splits``
with the same validation fraction and seed; the validation piece is left out, as finetune
holds it out) and prints one line ``BENCH_RESULT {json}``: the test mAP (scikit-learn's
``average_precision_score`` per class, averaged over the classes with a positive image),
micro and macro F1 and exact match at a 0.5 threshold (the reference has no tuned
thresholds), training time, and ``uptime``.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CIFAR10, LITE0, RESULT_TAG, ROOT, TINY_VIT, make_tiny_vit  # noqa: E402

TILE = 32  # a CIFAR-10 image's side


def _cifar_split(cifar10: Path, split: str):
    """(PNG bytes of every image, labels, class names) of a CIFAR-10 split in the Hub's layout."""
    import pyarrow.parquet as pq

    files = sorted((cifar10 / "plain_text").glob(f"{split}-*.parquet"))
    if not files:
        raise SystemExit(f"no {split}-*.parquet under {cifar10 / 'plain_text'}; give --cifar10 the CIFAR-10 folder")
    tables = [pq.read_table(f) for f in files]
    meta = json.loads(tables[0].schema.metadata[b"huggingface"])["info"]["features"]
    images = [row["bytes"] for t in tables for row in t.column("img").to_pylist()]
    labels = [v for t in tables for v in t.column("label").to_pylist()]
    return images, labels, list(meta["label"]["names"])


def mosaics(images: list[bytes], labels: list[int], n: int, seed: int) -> tuple[list[bytes], list[list[int]]]:
    """``n`` 2×2 mosaics of four distinct images drawn at random (seeded), as PNG bytes, with
    the sorted set of their classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out, sets = [], []
    for _ in range(n):
        picks = rng.choice(len(images), size=4, replace=False)
        canvas = np.zeros((2 * TILE, 2 * TILE, 3), dtype=np.uint8)
        for k, i in enumerate(picks):
            r, c = divmod(k, 2)
            tile = np.asarray(Image.open(io.BytesIO(images[int(i)])).convert("RGB"))
            canvas[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = tile
        buffer = io.BytesIO()
        Image.fromarray(canvas).save(buffer, format="PNG")
        out.append(buffer.getvalue())
        sets.append(sorted({int(labels[int(i)]) for i in picks}))
    return out, sets


def build(args: argparse.Namespace) -> int:
    """Write the mosaic set (unless it is there) and print where, with its label statistics."""
    from datasets import ClassLabel, Dataset, Features, Image, List

    folder = Path(args.work) / f"mosaic-{args.train}-{args.test}-s{args.seed}" / "data"
    names: list[str] = []
    stats = {}
    for split, n, seed in (("train", args.train, args.seed), ("test", args.test, args.seed + 1)):
        path = folder / f"{split}.parquet"
        if not path.is_file():
            images, labels, names = _cifar_split(Path(args.cifar10), split)
            pngs, sets = mosaics(images, labels, n, seed)
            features = Features({"image": Image(), "labels": List(ClassLabel(names=names))})
            folder.mkdir(parents=True, exist_ok=True)
            rows = {"image": [{"bytes": b, "path": None} for b in pngs], "labels": sets}
            Dataset.from_dict(rows, features=features).to_parquet(str(path))
        sets = Dataset.from_parquet(str(path))["labels"][:]
        stats[split] = {"images": len(sets), "labels_per_image": round(sum(map(len, sets)) / max(len(sets), 1), 3)}
    print(json.dumps({"dataset": str(folder), **stats}))
    return 0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def scores(probabilities, targets) -> dict[str, float]:
    """mAP over the classes with a positive image, micro/macro F1 (macro over those classes)
    and exact match at 0.5, with scikit-learn."""
    import numpy as np
    from sklearn.metrics import average_precision_score, f1_score

    present = targets.sum(axis=0) > 0
    ap = [average_precision_score(targets[:, c], probabilities[:, c]) for c in np.flatnonzero(present)]
    predicted = (probabilities >= 0.5).astype(np.int64)
    return {
        "map": float(np.mean(ap)) if ap else float("nan"),
        "f1_micro": float(f1_score(targets, predicted, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(targets[:, present], predicted[:, present], average="macro", zero_division=0)),
        "exact_match": float((predicted == targets).all(axis=1).mean()),
    }


def reference(args: argparse.Namespace) -> int:
    """The reference design, adapted to multi-label: train on the training piece, score the test split."""
    import numpy as np
    import torch
    from datasets import load_dataset
    from torchvision import transforms as T
    from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

    sys.path.insert(0, str(ROOT))
    from finetune import data
    from finetune.data.decode import processor_normalization
    from finetune.models import builtin
    from finetune.recipe import DataConfig

    work = Path(args.work)
    folder = Path(args.data) if args.data else work / f"mosaic-{args.train}-{args.test}-s0" / "data"
    if args.model == "tiny":
        name = str(make_tiny_vit(work / TINY_VIT))
    elif args.model == "lite0":
        name = builtin.resolve_model(LITE0)
    else:
        name = args.model
    raw = load_dataset("parquet", data_files={"train": str(folder / "train.parquet"), "test": str(folder / "test.parquet")})
    cfg = DataConfig(dataset=str(folder), validation_fraction=args.validation_fraction)
    splits = data.make_splits(raw, cfg, args.seed)  # finetune's training piece, so both train on the same images
    if not splits.multi_label:
        raise SystemExit(f"{folder}: the labels are not multi-label")
    names = splits.class_names
    processor = AutoImageProcessor.from_pretrained(name)
    size = (args.image_size, args.image_size) if args.image_size else data.output_size(processor)
    mean, std = processor_normalization(processor)
    normalize = T.Normalize(mean=mean, std=std)
    train_tf = T.Compose([T.RandomResizedCrop(size, scale=tuple(args.crop_scale)), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    eval_tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), normalize])

    def apply(transform):
        def batch(examples):
            examples["pixel_values"] = [transform(image.convert("RGB")) for image in examples["image"]]
            return examples

        return batch

    train, test = splits.train, splits.eval
    train.set_transform(apply(train_tf))
    test.set_transform(apply(eval_tf))

    def collate(examples):
        targets = torch.zeros(len(examples), len(names))
        for row, e in enumerate(examples):
            targets[row, e["labels"]] = 1.0
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]), "labels": targets}

    model = AutoModelForImageClassification.from_pretrained(
        name, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        problem_type="multi_label_classification", ignore_mismatched_sizes=True,
    )
    out = Path(args.out) if args.out else work / f"reference-{args.model.replace('/', '_')}"
    settings = TrainingArguments(
        output_dir=str(out), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=args.batch, learning_rate=args.lr, dataloader_num_workers=args.workers,
        save_strategy="no", eval_strategy="no", logging_steps=10, report_to=[], seed=args.seed,
        remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=settings, train_dataset=train, data_collator=collate)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    predicted = trainer.predict(test)
    probabilities = torch.sigmoid(torch.as_tensor(predicted.predictions, dtype=torch.float32)).numpy()
    targets = np.asarray(predicted.label_ids, dtype=np.int64)
    result: dict[str, Any] = {
        "design": "reference (Trainer, BCE)", "model": args.model, "dataset": str(folder),
        "train_images": len(train), "test_images": len(test), "epochs": args.epochs,
        **scores(probabilities, targets), "train_seconds": round(seconds, 1), "uptime": _uptime(),
    }
    print(RESULT_TAG + json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("build", "reference"):
        p = sub.add_parser(command)
        p.add_argument("--work", default=str(ROOT.parent / "bench-work"), help="where the set (and runs) go")
        p.add_argument("--train", type=int, default=2000, help="training mosaics")
        p.add_argument("--test", type=int, default=1000, help="test mosaics")
        if command == "build":
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--cifar10", default=str(CIFAR10))
        else:
            p.add_argument("--data", default=None, help="the set's data folder (default: WORK/mosaic-TRAIN-TEST-s0/data)")
            p.add_argument("--model", default="tiny", help="tiny (a random tiny ViT), lite0, or a model path / Hub id")
            p.add_argument("--epochs", type=float, default=10)
            p.add_argument("--batch", type=int, default=64)
            p.add_argument("--lr", type=float, default=3e-4)
            p.add_argument("--crop-scale", type=float, nargs=2, default=[0.5, 1.0])
            p.add_argument("--validation-fraction", type=float, default=0.1)
            p.add_argument("--seed", type=int, default=42)
            p.add_argument("--workers", type=int, default=2)
            p.add_argument("--out", default=None)
            p.add_argument("--image-size", type=int, default=None, help="the input side (default: the processor's)")
    p = sub.add_parser("compare")
    p.add_argument("--work", default=str(ROOT.parent / "bench-work"))
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--cifar10", default=str(CIFAR10))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--only", default="probe,small,reference")
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args)
    return build(args) if args.command == "build" else reference(args)


#: The small-data recipe's settings (recipes/cifar10_lite0_small.json), on the mosaics.
SMALL = {
    "model": {"name_or_path": LITE0, "strategy": "partial", "unfreeze_last_n": 4},
    "training": {"num_train_epochs": 5, "learning_rate": 0.002, "weight_decay": 0.05, "warmup_steps": 0.1,
                 "lr_scheduler_type": "cosine", "label_smoothing_factor": 0.1, "per_device_train_batch_size": 64,
                 "per_device_eval_batch_size": 128, "save_strategy": "no", "seed": 42},
    "augment": {"crop_scale": [0.6, 1.0], "hflip": True},
}
#: The linear probe: the L-BFGS head (one-vs-rest here) on the frozen Lite0's features.
PROBE = {
    "model": {"name_or_path": LITE0, "strategy": "linear_probe", "probe_solver": "lbfgs"},
    "training": {"per_device_eval_batch_size": 128, "seed": 42},
    "augment": {"crop_scale": None, "hflip": False},
}


def compare(args: argparse.Namespace) -> int:
    """Ours (the linear probe, the small-data recipe) and the reference, each a whole command
    on the same mosaics, timed from the shell; mAP and the rest on the test mosaics."""
    import os
    import shutil

    work = Path(args.work).resolve()
    build_args = argparse.Namespace(work=str(work), train=args.train, test=args.test, seed=0, cifar10=args.cifar10)
    build(build_args)
    folder = work / f"mosaic-{args.train}-{args.test}-s0" / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", HF_DATASETS_CACHE=str(work / "hf-datasets"))
    rows = []
    log = open(work / "mosaic.log", "a")
    for name in args.only.split(","):
        out = work / "runs" / f"mosaic-{name}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / "hf-datasets", ignore_errors=True)
        if name == "reference":
            # The example's usual settings, as bench/small_recipe.py's reference: AdamW 1e-3,
            # 3 epochs, RandomResizedCrop 0.08-1, flips; at the same input size as ours.
            command = [sys.executable, "bench/mosaic.py", "reference", "--work", str(work), "--data", str(folder),
                       "--model", "lite0", "--epochs", "3", "--lr", "1e-3", "--crop-scale", "0.08", "1.0",
                       "--image-size", str(args.image_size), "--out", str(out)]
        else:
            settings = SMALL if name == "small" else PROBE
            recipe = {
                "description": f"bench/mosaic.py: {name} on the CIFAR-10 mosaics",
                "model": settings["model"],
                "data": {"dataset": str(folder), "validation_fraction": 0.1, "image_size": args.image_size,
                         "augment": settings["augment"]},
                "training": settings["training"],
                "output_dir": str(out),
            }
            path = work / f"mosaic-{name}.json"
            path.write_text(json.dumps(recipe, indent=2))
            command = [sys.executable, "finetune/run.py", "--recipe", str(path)]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        log.write(f"===== {name} (exit {proc.returncode}, {wall:.1f} s, load {load:.2f})\n{proc.stdout}\n{proc.stderr}\n")
        log.flush()
        if proc.returncode != 0:
            raise SystemExit(f"bench: {name} failed; see {log.name}\n{proc.stderr[-2000:]}")
        if name == "reference":
            found = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG))[len(RESULT_TAG):])
        else:
            results = json.loads((out / "eval_results.json").read_text())
            found = {k: results[f"eval_{k}"] for k in ("map", "f1_micro", "f1_macro", "exact_match")}
            found["map_ci"] = [results.get("eval_map_ci_low"), results.get("eval_map_ci_high")]
        rows.append({"design": name, "wall_s": round(wall, 1), "load": load, **found, "uptime": _uptime()})
        print(json.dumps(rows[-1]), flush=True)
    with open(work / "mosaic-results.jsonl", "a") as sink:
        for row in rows:
            sink.write(json.dumps(row) + "\n")
    print("| design | mAP | F1 micro | F1 macro | exact match | wall s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['design']} | {r['map']:.3f} | {r['f1_micro']:.3f} | {r['f1_macro']:.3f} | {r['exact_match']:.3f} | {r['wall_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
