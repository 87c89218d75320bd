"""The shipped small-data recipe against the usual example design, as whole commands: accuracy and wall time.

    python bench/small_recipe.py [--repeats 3] [--work DIR] [--set KEY=VALUE ...] [--json FILE]

Both sides train the built-in EfficientNet-Lite0 (real ImageNet weights) on the same 2,000
CIFAR-10 training images of ``../shared/datasets/cifar10`` (a stratified 10 % more as the
validation piece), at 96 px, and are scored once on the same 1,000 test images:

- OURS: ``finetune train --recipe recipes/cifar10_lite0_small.json`` as a user runs it (``--set``
  adds overrides, for trying settings; the figures in bench/README.md and docs/strategies.md
  are without any);
- REFERENCE: ``python bench/reference.py``, the design of transformers' image-classification
  example (per-image torchvision transforms through ``with_transform``, a plain Trainer),
  with that example's usual settings: AdamW at 1e-3, 3 epochs, batch 64, linear schedule,
  RandomResizedCrop (0.08-1) and horizontal flips.

Timed from the shell around each whole process (Python start, imports, the decode pass with
a cold cache, training, the final evaluation, and for OURS the report and card), the sides
taking turns; each figure is the median of ``--repeats`` runs, with the load average around
every run. Target: OURS at least 0.72 test accuracy, in no more wall time than REFERENCE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from commands import FINETUNE, drop_decode_cache, environment, run_reference, timed  # noqa: E402
from common import CIFAR10, LITE0, ROOT, Scenario, warm_up  # noqa: E402

RECIPE = ROOT / "recipes" / "cifar10_lite0_small.json"
TARGET_ACCURACY = 0.72

REFERENCE = Scenario(
    key="small",
    title="EfficientNet-Lite0, full fine-tune, 2,000 CIFAR-10 images, 96 px (the example's settings)",
    kind="train",
    model=LITE0,
    image_size=96,
    n_train=2000,
    n_eval=1000,
    strategy="full",
    epochs=3,
    validation_fraction=0.1,
    crop_scale=[0.08, 1.0],
    hflip=True,
    training={"learning_rate": 1e-3, "optim": "adamw_torch", "weight_decay": 0.0, "lr_scheduler_type": "linear"},
)


def run_ours(work: Path, n: int, overrides: list[str], log) -> dict[str, Any]:
    out = work / "runs" / f"ours-{n}"
    shutil.rmtree(out, ignore_errors=True)
    drop_decode_cache(work)
    load = os.getloadavg()[0]
    sets = [arg for o in [*overrides, f"output_dir={out}"] for arg in ("--set", o)]
    wall, proc = timed([*FINETUNE, "train", "--recipe", str(RECIPE), *sets], environment(work), log, f"ours #{n}")
    if proc.returncode != 0:
        raise SystemExit(f"bench: ours failed (exit {proc.returncode}); see {log.name}\n{proc.stderr[-2000:]}")
    final = json.loads((out / "eval_results.json").read_text())
    return {"wall_s": wall, "accuracy": float(final["eval_accuracy"]), "load_before": load, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per side; the median is reported (default 3)")
    parser.add_argument("--work", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for OURS' recipe")
    parser.add_argument("--no-reference", action="store_true", help="OURS alone (for trying settings)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args(argv)
    if not any(CIFAR10.glob("**/*.parquet")):
        print(f"bench: CIFAR-10 is missing: expected the Hub-layout copy at {CIFAR10}", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="finetune-small-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(environment(work))
    print(f"bench: {RECIPE.name} against the example design; {args.repeats} run(s) per side; overrides {args.overrides}; "
          f"work {work}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)
    warm_up(work, [REFERENCE])
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "reference": []}
    with (work / "small_recipe.log").open("w") as log:
        for n in range(args.repeats):
            sides = [("ours", lambda: run_ours(work, n, args.overrides, log))]
            if not args.no_reference:
                sides.insert(0, ("reference", lambda: run_reference(REFERENCE, work, n, log)))
            for side, fn in sides:
                res = fn()
                runs[side].append(res)
                print(f"  {side:9s} #{n}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})}", flush=True)
    print()
    for side, rows in runs.items():
        if rows:
            print(f"{side:9s} wall s median {statistics.median(r['wall_s'] for r in rows):7.1f} {[round(r['wall_s'], 1) for r in rows]}  "
                  f"accuracy median {statistics.median(r['accuracy'] for r in rows):.4f} {[round(r['accuracy'], 4) for r in rows]}")
    if runs["reference"]:
        ours_wall = statistics.median(r["wall_s"] for r in runs["ours"])
        ref_wall = statistics.median(r["wall_s"] for r in runs["reference"])
        accuracy = statistics.median(r["accuracy"] for r in runs["ours"])
        ok = accuracy >= TARGET_ACCURACY and ours_wall <= ref_wall
        print(f"target: accuracy >= {TARGET_ACCURACY} in <= the reference's wall time: {accuracy:.4f}, "
              f"{ours_wall:.1f} s vs {ref_wall:.1f} s -> {'MET' if ok else 'NOT MET'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"overrides": args.overrides, "results": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
