"""Controlled benchmark: our pipeline against the usual Hugging Face example design.

    python bench/pipeline.py [--quick] [--only a,b,c] [--json results.json]

OURS is the real finetune code: ``finetune.training.train.train`` on a recipe built with
``finetune.recipe.recipe_from_dict``, or, for the data-only rows, the functions ``train()``
itself uses (``prepared_data.prepare_data``, ``data.FastRows``, ``data.BatchTransform``). The
data is decoded once into a uint8 cache at the smaller of the images' size and the model's
input size (CIFAR-10's 32 px); each batch is gathered from the memory-mapped cache straight into one
tensor; the batch transform resizes (for the model), augments and normalises whole batches
into reused buffers; a linear probe runs the frozen backbone once and trains
the head on cached features.

REFERENCE is the design of transformers' ``examples/pytorch/image-classification/
run_image_classification.py``: per-image PIL/torchvision transforms applied through
``Dataset.with_transform`` at every step, a stacking collate function, and a plain
``transformers.Trainer``. Everything else is the same: model, images, hyper-parameters,
seed, machine, and ``dataloader_num_workers``, which both sides leave at 0 on CPU. The
reference takes two things from finetune, so that the comparison is exact rather than
approximate: the split indices (``data.make_splits``, a pure function of the labels and the
seed) and the resized image processor (``model.load_processor``), from which it builds its
own per-image transforms. For a linear probe it freezes everything but the last Linear and
keeps the frozen backbone in eval mode, as ours does. That choice does not weaken the
reference: batch-norm statistics that drift in train mode would only lower its accuracy.

Scenarios, with their targets:

(a) linear probe of ``builtin:efficientnet-lite0`` (real ImageNet weights) on 2,000 CIFAR-10
    training images, scored on 1,000 test images, 96 px, SGD lr 0.001 momentum 0.9,
    batch 64, 10 epochs. Target: 5× faster end to end, with accuracy at least as high.
    Neither side augments. Cached features cannot be augmented, so the sides are equal only
    if the reference does not augment either.
(a+lbfgs) the same probe with ``model.probe_solver: lbfgs``: the head fitted as an
    L2-regularised logistic regression, λ chosen on the validation piece, against the same
    reference run. Shown for information (no target).
(b) full fine-tune of a tiny ViT (patch 32, width 16, 1 layer, random init from a config) at
    224 px, with RandomResizedCrop(0.08-1) and flips. Target: 2× the reference's training
    images/s. The model is deliberately tiny, about 5 MFLOPs per image forward (about
    0.5 ms per image for forward, backward and AdamW on one core), against about 150k
    output pixels of input work per image. A ResNet-18 at 224 px, about
    1.8 GFLOPs per image, would make both sides model-bound on a CPU and say nothing
    about the input pipeline, which is what the scenario measures.
(c) data only, no model, 224 px: our decoded cache plus batch transform, against per-image
    PIL decode, resize, ToTensor and Normalize through ``with_transform`` and a DataLoader.
    Target: 5× the reference's images/s. (c+aug) is the same measurement with (b)'s
    augmentation, shown for information.

Every measurement runs in a fresh subprocess, so neither side inherits the other's warm
caches or memory. Our decode cache starts cold: ``datasets.disable_caching()`` stops a
second run from reusing the fingerprinted decode. The raw parquet-to-arrow load of
CIFAR-10 is warmed once beforehand for both sides, because it is not what is compared. Both
sides run with the same number of intra-op threads (``--threads``, default 1, see its help).
Wall time is measured inside the subprocess, from the start of the pipeline to the final metrics.
Python and library imports are excluded; they cost the two sides the same. The load average
is printed before and after each run, because the machine may be shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CIFAR10, RESULT_TAG, ROOT, Scenario, processor_for, recipe_dict, same_splits, scenarios, warm_up  # noqa: E402
from reference import reference_train, with_transforms  # noqa: E402

# ------------------------------------------------------------------------------ ours


def ours_train(s: Scenario, work: Path) -> dict[str, Any]:
    from transformers import set_seed

    from finetune.recipe import recipe_from_dict
    from finetune.training.train import train

    out = work / f"ours-{s.key}"
    recipe = recipe_from_dict(recipe_dict(s, work, out))
    set_seed(s.seed)  # the new head's initialisation, as in the reference
    start = time.perf_counter()
    final = train(recipe, overwrite=True)
    wall = time.perf_counter() - start
    train_metrics = json.loads((out / "train_results.json").read_text())
    # With cached features the backbone's pass replaces its per-step forwards: count it.
    seconds = float(train_metrics["train_runtime"]) + float(train_metrics.get("feature_cache_runtime", 0.0))
    return {
        "wall_s": wall,
        "train_images_per_s": s.n_train * s.epochs / seconds,
        "accuracy": float(final["eval_accuracy"]),
        "train_runtime_s": float(train_metrics["train_runtime"]),
        "feature_cache_s": float(train_metrics.get("feature_cache_runtime", 0.0)),
    }


def ours_data(s: Scenario, work: Path) -> dict[str, Any]:
    """Our input pipeline alone: decode once (timed apart), then epochs of loader + batch transform."""
    import torch

    from finetune import data
    from finetune.recipe import recipe_from_dict
    from finetune.training.prepared_data import prepare_data
    from finetune.training.train import FinetuneTrainer, training_arguments

    recipe = recipe_from_dict(recipe_dict(s, work, work / f"ours-{s.key}"))
    start = time.perf_counter()
    processor = processor_for(s, work)
    prepared = prepare_data(recipe, processor, s.seed)
    decode_s = time.perf_counter() - start
    # As train() builds it: normalisation, and the processor's resize of small cached images.
    transform = data.BatchTransform.for_processor(processor, recipe.data.augment)
    # The training DataLoader exactly as train() gets it (sampler, collator, accelerate
    # wrapper, worker settings), from a FinetuneTrainer around a model-less stand-in.
    trainer = FinetuneTrainer(
        model=torch.nn.Identity(),
        # No evaluation: the Trainer refuses a per-epoch evaluation without an eval split.
        args=dataclasses.replace(training_arguments(recipe), eval_strategy="no"),
        # Wrapped as train() wraps them: batches gathered from the cache in one go (without
        # it, the default collator stacks rows and a channels-last split has no pixel_values).
        train_dataset=data.FastRows.wrap(prepared.train),
        eval_dataset=None,
        data_collator=data.collate,
        batch_transform=transform,
    )
    loader = trainer.get_train_dataloader()
    augment = s.crop_scale is not None or s.hflip

    def epoch() -> int:
        n = 0
        for batch in loader:
            pixels = transform(batch["pixel_values"], train=augment)
            n += pixels.shape[0]
        return n

    return {"decode_s": decode_s, **_epochs(epoch)}


# ------------------------------------------------------------------------- reference


def reference_data(s: Scenario, work: Path) -> dict[str, Any]:
    import torch

    splits = same_splits(s)
    processor = processor_for(s, work)
    train, _, _, collate_fn = with_transforms(s, processor, splits)
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=s.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(s.seed),
        collate_fn=collate_fn,
        num_workers=0,
    )

    def epoch() -> int:
        n = 0
        for batch in loader:
            n += batch["pixel_values"].shape[0]
        return n

    return _epochs(epoch)


def _epochs(run_epoch, count: int = 2) -> dict[str, Any]:
    """Images/s of the best of ``count`` epochs: the machine may be shared, and a slow epoch
    says more about the neighbours than about the pipeline."""
    rates = []
    for _ in range(count):
        start = time.perf_counter()
        n = run_epoch()
        rates.append(n / (time.perf_counter() - start))
    return {"data_images_per_s": max(rates), "data_images_per_s_epochs": rates}


# ----------------------------------------------------------------------------- driver


def worker(side: str, s: Scenario, work: Path, threads: int) -> None:
    import datasets
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    datasets.disable_caching()  # cold decode: a re-run may not reuse the last run's cache
    datasets.disable_progress_bars()
    fn = {
        ("ours", "train"): ours_train,
        ("ours", "data"): ours_data,
        ("reference", "train"): reference_train,
        ("reference", "data"): reference_data,
    }[(side, s.kind)]
    result = fn(s, work)
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_worker(side: str, s: Scenario, work: Path, log, threads: int) -> dict[str, Any]:
    env = dict(
        os.environ,
        **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads > 0 else {}),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        HF_DATASETS_CACHE=str(work / "hf-datasets"),
    )
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--scenario", json.dumps(asdict(s)), "--work", str(work), "--threads", str(threads)]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    log.write(f"===== {side} {s.key} (exit {proc.returncode}, {elapsed:.0f} s)\n{proc.stdout}\n{proc.stderr}\n")
    log.flush()
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"bench: {side} {s.key} failed (exit {proc.returncode}); see {log.name}\n{tail}")
    result = json.loads(lines[-1][len(RESULT_TAG) :])
    result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    return result


def ratio_row(name: str, ours: float, ref: float, higher_is_better: bool = True) -> tuple[str, str, str, str]:
    r = ours / ref if higher_is_better else ref / ours
    return name, f"{ours:,.1f}", f"{ref:,.1f}", f"{r:.2f}x"


def table(results: dict[str, dict[str, dict[str, Any]]], todo: list[Scenario]) -> str:
    """The printed table: one block per scenario, with its target and whether it holds."""
    rows: list[tuple[str, ...]] = []
    verdicts: list[str] = []
    for s in todo:
        o, r = results[s.key]["ours"], results[s.key]["reference"]
        load = f"load {min(o['load_before'], r['load_before']):.1f}-{max(o['load_after'], r['load_after']):.1f}"
        if s.kind == "train":
            rows.append((s.title, "wall time, s (lower is better)", *ratio_row("", o["wall_s"], r["wall_s"], False)[1:]))
            if s.probe_solver != "lbfgs":  # an L-BFGS fit has no epochs of images to count
                rows.append(("", "training images/s", *ratio_row("", o["train_images_per_s"], r["train_images_per_s"])[1:]))
            rows.append(("", "eval accuracy", f"{o['accuracy']:.4f}", f"{r['accuracy']:.4f}", f"{o['accuracy'] - r['accuracy']:+.4f}"))
            if "feature_cache_s" in o and o["feature_cache_s"]:
                rows.append(("", "  of which feature pass, s", f"{o['feature_cache_s']:.1f}", "-", ""))
            if s.probe_solver == "lbfgs":
                rows.append(("", "  of which L-BFGS fits (all λ), s", f"{o['train_runtime_s']:.1f}", "-", ""))
        else:
            rows.append((s.title, "data-only images/s", *ratio_row("", o["data_images_per_s"], r["data_images_per_s"])[1:]))
            if "decode_s" in o:
                rows.append(("", "  our one-off decode, s", f"{o['decode_s']:.1f}", "-", ""))
        rows.append(("", f"  ({load})", "", "", ""))
        if s.key == "a":
            speed = r["wall_s"] / o["wall_s"]
            ok = speed >= 5 and o["accuracy"] >= r["accuracy"]
            verdicts.append(f"(a) >= 5x faster end to end at equal or better accuracy: {speed:.2f}x, "
                            f"accuracy {o['accuracy']:.4f} vs {r['accuracy']:.4f} -> {'MET' if ok else 'NOT MET'}")
        elif s.key == "b":
            speed = o["train_images_per_s"] / r["train_images_per_s"]
            verdicts.append(f"(b) >= 2x training images/s: {speed:.2f}x -> {'MET' if speed >= 2 else 'NOT MET'}")
        elif s.key == "c":
            speed = o["data_images_per_s"] / r["data_images_per_s"]
            verdicts.append(f"(c) >= 5x data-only images/s at 224 px: {speed:.2f}x -> {'MET' if speed >= 5 else 'NOT MET'}")
    header = ("scenario", "metric", "ours", "reference", "ours vs ref (>1: ours better)")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines + [""] + verdicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check in a few minutes")
    parser.add_argument("--only", default="a,b,c", help="comma-separated scenarios among a, b, c (default: all)")
    parser.add_argument("--work", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads of every run, both sides (default 1; 0: torch's default). On a small shared "
        "machine a second thread stalls at every barrier while a neighbour holds its core (3-5x slower "
        "forward passes measured here), which would make the ratios measure the neighbours",
    )
    parser.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if not (CIFAR10 / "README.md").is_file() and not any(CIFAR10.glob("**/*.parquet")):
        print(
            f"bench: CIFAR-10 is missing: expected the Hub-layout copy (uoft-cs/cifar10: img, label; "
            f"train and test parquet files) at {CIFAR10}, i.e. ../shared/datasets/cifar10 next to the repository",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(ROOT))
    if args.worker:
        worker(args.worker, Scenario(**json.loads(args.scenario)), Path(args.work), args.threads)
        return 0

    wanted = {k.strip() for k in args.only.split(",") if k.strip()}
    todo = [s for s in scenarios(args.quick) if s.key.split("-")[0].split("+")[0] in wanted]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "bench.log"
    print(f"bench: {'quick' if args.quick else 'full'} run of {', '.join(s.key for s in todo)}; work folder {work}; "
          f"log {log_path}; load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; "
          f"{args.threads or 'default'} intra-op thread(s) per run", flush=True)
    warm_up(work, todo)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with log_path.open("w") as log:
        for s in todo:
            results[s.key] = {}
            for side in ("reference", "ours"):
                if side == "reference" and s.reference_of in results:
                    results[s.key][side] = results[s.reference_of][side]
                    continue
                results[s.key][side] = res = run_worker(side, s, work, log, args.threads)
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}
                print(f"  {s.key:6s} {side:9s} {shown}", flush=True)
    print()
    print(table(results, todo))
    if args.json:
        Path(args.json).write_text(json.dumps({"quick": args.quick, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
