"""Stochastic depth and test-time augmentation on real CIFAR-10: accuracy, and what the views cost.

    python bench/depth_tta.py drop-path [--rates none,0.1,0.2] [--seeds 42,43] [--work DIR]
    python bench/depth_tta.py kshot [--cells full:5,full:20,full:100,linear_probe:100] [--work DIR]
    python bench/depth_tta.py tta [--work DIR] [--modes none,hflip,hflip+crops] [--per-class 100]
    python bench/depth_tta.py summary [--work DIR]

``drop-path`` trains ``recipes/cifar10_lite0_small.json`` as a user runs it (``finetune
train --recipe ...``) with ``--set model.drop_path_rate=R`` (``none``: the recipe as it is)
and ``--set training.seed=S``; ``training.data_seed`` stays 42, so every run has the same
2,000 training images, validation piece and 1,000 test images, and only the training draws
(head init, batch order, crops, the drops themselves) change with the seed. Each run's test
and last validation accuracy and wall time go to ``WORK/drop_path-rRATES-sSEEDS.json``.

``kshot`` trains cells of ``recipes/study_cifar10_kshot.json`` (strategy:k, its first seed)
with ``finetune train --set model.strategy=... --set data.samples_per_class=...``.

``tta`` scores the small recipe's runs without drop path and the k-shot cells with ``finetune
eval RUN --data SUBSET --split test --tta MODE`` for each mode, SUBSET being the first
``--per-class`` (100) test images of each class (``--per-class 0``: all 10,000). Each command
is timed, after a warm-up pass per input size that fills the decode cache, so every timed
command decodes alike; accuracy, mean cross-entropy and wall time go to ``WORK/tta.json``.
Each mode scores the same model on the same images, so the accuracy differences between
modes are paired.

Timed from the shell, on the machine's default threads; the load average is recorded
around every command: on a shared machine, times taken under another job's load are not a
result, the accuracies are.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from commands import environment, timed  # noqa: E402
from common import CIFAR10, ROOT  # noqa: E402

#: This checkout's entry point (run as a script it imports the package next to it, not an
#: installed copy), with the subcommands of the ``finetune`` console script.
FINETUNE = [sys.executable, str(ROOT / "finetune" / "run.py")]

SMALL = ROOT / "recipes" / "cifar10_lite0_small.json"
KSHOT = ROOT / "recipes" / "study_cifar10_kshot.json"


def _train(recipe: Path, out: Path, sets: list[str], work: Path, data: Path, log) -> dict[str, Any]:
    """Train one run (a finished one in ``out`` is kept: the phases resume where they stopped)."""
    args = [arg for s in [*sets, f"output_dir={out}", f"data.dataset={data}"] for arg in ("--set", s)]
    load = os.getloadavg()[0]
    wall = None
    if not (out / "eval_results.json").is_file():
        command = [*FINETUNE, "train", "--recipe", str(recipe), "--overwrite", *args]
        wall, proc = timed(command, environment(work), log, out.name)
        if proc.returncode != 0:
            raise SystemExit(f"bench: {out.name} failed (exit {proc.returncode}); see {log.name}\n{proc.stderr[-2000:]}")
    final = json.loads((out / "eval_results.json").read_text())
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    validation = [e["eval_accuracy"] for e in history if "eval_accuracy" in e]
    return {
        "run": str(out), "test_accuracy": float(final["eval_accuracy"]),
        "validation_accuracy": validation[-1] if validation else None,
        "wall_s": round(wall, 1) if wall is not None else None, "load_before": load, "load_after": os.getloadavg()[0],
    }


def drop_path(args, work: Path, log) -> None:
    results = []
    for seed in args.seeds.split(","):
        for rate in args.rates.split(","):
            out = work / "runs" / f"small-dp{rate}-s{seed}"
            sets = [f"training.seed={seed}", "training.data_seed=42"]
            if rate != "none":
                sets.append(f"model.drop_path_rate={rate}")
            result = {"rate": rate, "seed": int(seed), **_train(SMALL, out, sets, work, args.data, log)}
            print(json.dumps(result), flush=True)
            results.append(result)
            # Named by what it holds, so that phases run side by side keep their own files.
            (work / f"drop_path-r{args.rates}-s{args.seeds}.json").write_text(json.dumps(results, indent=1))


def kshot(args, work: Path, log) -> None:
    results = []
    for cell in args.cells.split(","):
        strategy, k = cell.split(":")
        out = work / "runs" / f"kshot-{strategy}-k{k}"
        sets = [f"model.strategy={strategy}", f"data.samples_per_class={k}"]
        result = {"cell": cell, **_train(KSHOT, out, sets, work, args.data, log)}
        print(json.dumps(result), flush=True)
        results.append(result)
        (work / "kshot.json").write_text(json.dumps(results, indent=1))


def _score(run: Path, mode: str, work: Path, data: Path, log, name: str | None = None) -> dict[str, Any]:
    report = work / "tta-reports" / (name or f"{run.name}-{mode}")
    command = [*FINETUNE, "eval", str(run), "--data", str(data), "--split", "test", "--tta", mode,
               "--batch-size", "128", "--report-dir", str(report)]
    load = os.getloadavg()[0]
    wall = None
    if not (report / "eval_report.json").is_file():  # scored before: kept
        wall, proc = timed(command, environment(work), log, f"{run.name} {mode}")
        if proc.returncode != 0:
            raise SystemExit(f"bench: eval of {run.name} failed (exit {proc.returncode}); see {log.name}\n{proc.stderr[-2000:]}")
    result = json.loads((report / "eval_report.json").read_text())
    return {
        "run": run.name, "tta": mode, "accuracy": result["accuracy"], "loss": result["loss"],
        "images": result["num_images"], "wall_s": round(wall, 1) if wall is not None else None, "load_before": load, "load_after": os.getloadavg()[0],
    }


def test_subset(data: Path, per_class: int, work: Path) -> Path:
    """The first ``per_class`` images of each class of the CIFAR-10 test split, as a folder
    with one parquet file (the class names in its ``datasets`` features): a fixed,
    class-balanced set, the same for every model scored."""
    from datasets import load_dataset

    target = work / f"cifar10-test-{per_class}-per-class"
    file = target / "test-00000-of-00001.parquet"
    if file.is_file():
        return target
    test = load_dataset(str(data), split="test")
    seen: dict[int, int] = {}
    keep = []
    for i, label in enumerate(test["label"]):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    target.mkdir(parents=True, exist_ok=True)
    test.select(keep).to_parquet(str(file))
    return target


def tta(args, work: Path, log) -> None:
    """Every mode, for the small recipe's runs without drop path and for the k-shot cells."""
    runs = sorted(p for p in (work / "runs").glob("*") if (p / "model.safetensors").is_file()
                  and ("-dpnone-" in p.name or p.name.startswith("kshot-")))
    data = test_subset(args.data, args.per_class, work) if args.per_class else args.data
    results, warm = [], set()
    for run in runs:
        kind = run.name.split("-")[0]
        if kind not in warm:
            # Warm-up: decodes the test images into the cache (one per input size), so every
            # timed command decodes alike.
            _score(run, "none", work, data, log, name=f"{run.name}-warm-up")
            warm.add(kind)
        for mode in args.modes.split(","):
            result = _score(run, mode, work, data, log)
            print(json.dumps(result), flush=True)
            results.append(result)
            (work / "tta.json").write_text(json.dumps(results, indent=1))


def summary(args, work: Path, log) -> None:
    """The tables of docs/strategies.md, from the run folders and ``tta.json``."""
    print("| drop_path_rate | seed | validation (last epoch) | test (1,000) |\n|---|---|---|---|")
    for run in sorted((work / "runs").glob("small-dp*")):
        if not (run / "eval_results.json").is_file():
            continue
        found = _train(SMALL, run, [], work, args.data, log)  # finished: only read
        rate, seed = run.name.removeprefix("small-dp").rsplit("-s", 1)
        print(f"| {rate} | {seed} | {found['validation_accuracy']:.3f} | {found['test_accuracy']:.3f} |")
    if (work / "tta.json").is_file():
        rows = json.loads((work / "tta.json").read_text())
        print("\n| run | tta | accuracy | cross-entropy | wall s |\n|---|---|---|---|---|")
        for r in rows:
            wall = f"{r['wall_s']:.1f}" if r["wall_s"] is not None else "–"
            print(f"| {r['run']} | {r['tta']} | {r['accuracy']:.4f} | {r['loss']:.4f} | {wall} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=("drop-path", "kshot", "tta", "summary"))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "finetune-depth-tta"), help="runs, caches and results go here")
    parser.add_argument("--data", type=Path, default=CIFAR10, help="the CIFAR-10 copy (Hub parquet layout)")
    parser.add_argument("--rates", default="none,0.1,0.2", help="drop-path: model.drop_path_rate values (none: unset)")
    parser.add_argument("--seeds", default="42,43", help="drop-path: training.seed values")
    parser.add_argument("--cells", default="full:5,full:20,full:100,linear_probe:100", help="kshot: strategy:k cells")
    parser.add_argument("--modes", default="none,hflip,hflip+crops", help="tta: the modes scored")
    parser.add_argument("--per-class", type=int, default=100,
                        help="tta: score the first N test images of each class (0: all 10,000)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"bench: no CIFAR-10 copy at {args.data}; pass --data")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    with open(work / f"{args.phase}-{time.strftime('%Y%m%d-%H%M%S')}.log", "w") as log:
        {"drop-path": drop_path, "kshot": kshot, "tta": tta, "summary": summary}[args.phase](args, work, log)
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
