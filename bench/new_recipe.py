"""`finetune new` on real CIFAR-10 folders, its recipes trained as written, against the shipped small-data recipe and the k-shot study's cells.

    python bench/new_recipe.py [--minutes 4] [--work DIR] [--cifar10 DIR] [--only small,kshot] [--kshot-seeds 3]

- ``small``: an image folder of the same 2,200 training images (``train/``: the 2,000 the
  small-data recipe trains on and its 200-image validation piece) and the same 1,000 test
  images (``test/``) that ``recipes/cifar10_lite0_small.json`` uses, as PNG files. Then
  ``finetune new FOLDER --minutes M`` and ``accelerate launch finetune/run.py --recipe`` the
  recipe it wrote, each timed as a whole command; and the shipped recipe itself,
  ``accelerate launch finetune/run.py --recipe recipes/cifar10_lite0_small.json``, on the same
  machine. Target: within 1 point of the shipped recipe's accuracy, the run within M minutes.
- ``kshot``: for each of ``--kshot-seeds`` draws, a folder of 10 training images per class and
  2,000 class-balanced test images; ``finetune new`` (which should pick a linear probe) and
  its recipe trained. Then the k-shot study's cells at 10 images per class (linear probe and
  full fine-tune, 3 seeds; ``finetune study recipes/study_cifar10_kshot.json --grid
  data.samples_per_class=10 --no-scratch``). Target: within 1 point of the best cell.

Every figure and the load average around each command go to ``WORK/new_recipe.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CIFAR10, ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))  # this checkout's finetune, for the folders made from its own splits

BIN = Path(sys.executable).parent
ACCELERATE = [str(BIN / "accelerate"), "launch"] if (BIN / "accelerate").exists() else [sys.executable, "-m", "accelerate.commands.launch"]
SMALL_RECIPE = ROOT / "recipes" / "cifar10_lite0_small.json"
STUDY_RECIPE = ROOT / "recipes" / "study_cifar10_kshot.json"


def environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", HF_DATASETS_CACHE=str(work / "hf-datasets"))
    return env


def run(command: list[str], work: Path, log, label: str) -> tuple[float, subprocess.CompletedProcess]:
    """One whole command from the shell, timed; its output into the log."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=environment(work), capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write(f"===== {label} (exit {proc.returncode}, {wall:.1f} s, load {load:.2f}->{os.getloadavg()[0]:.2f})\n"
              f"$ {' '.join(command)}\n{proc.stdout}\n{proc.stderr}\n")
    log.flush()
    if proc.returncode != 0:
        raise SystemExit(f"bench: {label} failed (exit {proc.returncode}); see {log.name}\n{proc.stderr[-2000:]}")
    return wall, proc


def export_folder(root: Path, parts: dict[str, Any], names: list[str], image_column: str, label_column: str) -> Path:
    """Write each split (a ``datasets`` split) as ``root/SPLIT/CLASS/N.png``."""
    if (root / "done").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for split, ds in parts.items():
        for n, row in enumerate(ds):
            folder = root / split / names[row[label_column]]
            folder.mkdir(parents=True, exist_ok=True)
            row[image_column].save(folder / f"{n:05d}.png")
    (root / "done").write_text("")
    return root


def small_folder(work: Path, cifar10: Path) -> Path:
    """The shipped small-data recipe's own images: its splits, made by its own code."""
    from datasets import concatenate_datasets

    from finetune import data
    from finetune.recipe import load_recipe
    from finetune.training.arguments import data_seed

    recipe = load_recipe(SMALL_RECIPE, [f"data.dataset={cifar10}"])
    splits = data.make_splits(data.load_raw(recipe.data), recipe.data, data_seed(recipe))
    train = concatenate_datasets([splits.train, splits.validation])
    return export_folder(work / "cifar10-small", {"train": train, "test": splits.eval}, splits.class_names,
                         splits.image_column, splits.label_column)


def kshot_folder(work: Path, cifar10: Path, seed: int, k: int = 10, test: int = 2000) -> Path:
    from finetune import data
    from finetune.recipe import DataConfig

    cfg = DataConfig(dataset=str(cifar10), image_column="img", label_column="label")
    raw = data.load_raw(cfg)
    train_labels = data.column(raw["train"], "label")
    test_labels = data.column(raw["test"], "label")
    import numpy as np

    chosen = data.balanced_sample(np.asarray(train_labels), None, seed, per_class=k)
    scored = data.balanced_sample(np.asarray(test_labels), test, 1000 + seed)
    names = raw["train"].features["label"].names
    return export_folder(work / f"cifar10-k{k}-seed{seed}", {"train": raw["train"].select(chosen), "test": raw["test"].select(scored)},
                         names, "img", "label")


def new_and_train(folder: Path, work: Path, minutes: float, log, label: str) -> dict[str, Any]:
    recipe = work / f"{label}.json"
    out = work / "runs" / label
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / "hf-datasets", ignore_errors=True)
    new_s, proc = run([sys.executable, "finetune/run.py", "new", str(folder), "--minutes", str(minutes), "--out", str(recipe),
                       "--force", "--output-dir", str(out)], work, log, f"new {label}")
    chosen = json.loads(recipe.read_text())
    train_s, _ = run([*ACCELERATE, "finetune/run.py", "--recipe", str(recipe)], work, log, f"train {label}")
    results = json.loads((out / "eval_results.json").read_text())
    return {"label": label, "new_s": new_s, "train_s": train_s, "accuracy": results["eval_accuracy"],
            "strategy": chosen["model"]["strategy"], "image_size": chosen["data"]["image_size"],
            "epochs": chosen["training"].get("num_train_epochs"), "notes": chosen["notes"],
            "planned_s": _planned(proc.stdout), "load": os.getloadavg()[0]}


def _planned(stdout: str) -> float | None:
    line = next((x for x in stdout.splitlines() if x.startswith("planned: about ")), None)
    return float(line.split()[2]) if line else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--work", default=str(ROOT.parent / "bench-work" / "new-recipe"))
    parser.add_argument("--cifar10", default=str(CIFAR10))
    parser.add_argument("--only", default="small,kshot")
    parser.add_argument("--kshot-seeds", type=int, default=3)
    args = parser.parse_args(argv)
    work, cifar10 = Path(args.work).resolve(), Path(args.cifar10).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"bench: finetune new, {args.minutes:g}-minute budget; {uptime}", flush=True)
    results: list[dict[str, Any]] = []
    with open(work / "new_recipe.log", "a") as log, open(work / "new_recipe.jsonl", "a") as sink:
        def keep(result: dict[str, Any]) -> None:
            result["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            sink.write(json.dumps(result) + "\n")
            sink.flush()
            results.append(result)
            shown = {k: v for k, v in result.items() if k not in ("notes", "uptime")}
            print(json.dumps(shown), flush=True)

        if "small" in args.only:
            folder = small_folder(work, cifar10)
            keep(new_and_train(folder, work, args.minutes, log, "small-new"))
            out = work / "runs" / "small-shipped"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(work / "hf-datasets", ignore_errors=True)
            wall, _ = run([*ACCELERATE, "finetune/run.py", "--recipe", str(SMALL_RECIPE), "--set", f"data.dataset={cifar10}",
                           "--set", f"output_dir={out}"], work, log, "small-shipped")
            keep({"label": "small-shipped", "train_s": wall,
                  "accuracy": json.loads((out / "eval_results.json").read_text())["eval_accuracy"], "load": os.getloadavg()[0]})
        if "kshot" in args.only:
            for seed in range(args.kshot_seeds):
                keep(new_and_train(kshot_folder(work, cifar10, seed), work, args.minutes, log, f"k10-new-seed{seed}"))
            out = work / "runs" / "k10-study"
            shutil.rmtree(out, ignore_errors=True)
            wall, _ = run([sys.executable, "finetune/run.py", "study", str(STUDY_RECIPE), "--grid", "data.samples_per_class=10",
                           "--no-scratch", "--set", f"data.dataset={cifar10}", "--set", f"output_dir={out}"], work, log, "k10-study")
            keep({"label": "k10-study", "wall_s": wall, "table": (out / "study.md").read_text()})
    print("\nsummary:")
    for r in results:
        if "accuracy" in r:
            print(f"  {r['label']:18s} accuracy {r['accuracy']:.4f}  run {r.get('train_s', 0):6.1f} s"
                  + (f" (planned {r['planned_s']:.0f} s; new {r['new_s']:.1f} s; {r['strategy']}, {r['image_size']} px, "
                     f"{r['epochs']} epochs)" if "new_s" in r else ""))
    kshot = [r["accuracy"] for r in results if r["label"].startswith("k10-new")]
    if kshot:
        print(f"  k=10 finetune new: mean accuracy {statistics.mean(kshot):.4f} over {len(kshot)} draws")
    study = next((r for r in results if r["label"] == "k10-study"), None)
    if study:
        print(study["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
