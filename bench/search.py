"""Search benchmark: a 20-trial search of a cached-feature probe against one run of the same recipe, as whole commands.

    python bench/search.py [--repeats 3] [--trials 20] [--quick] [--work DIR]

The recipe is scenario (a) of ``bench/pipeline.py``: the linear probe of EfficientNet-Lite0
on cached features, 2,000 CIFAR-10 training images (a tenth of them the validation piece),
96 px, 10 epochs, 1,000 test images. The two commands, timed from the shell:

- SINGLE: ``finetune train --recipe R.json``, the recipe as it is;
- SEARCH: ``finetune search S.json --trials 20``: the same recipe with a ``search`` block over
  the learning rate (log-uniform) and the weight decay, the final run of the best recipe
  included (``--final``, the default).

Both pay for Python's start, the imports, the decode pass (its cache is removed before every
run, as in ``bench/commands.py``), the backbone's pass and the outputs. A search runs the
backbone once for all its trials and its final run, so what it adds is 20 head fits, the
study and its pictures. Target: SEARCH ≤ 2 × SINGLE in wall time, on 2 CPU cores.

Each figure is the median of ``--repeats`` runs, the two commands taking turns; the load
average is printed around every run (a ratio measured under another job's load is not a
result). Neither command gets thread settings from this script.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from commands import FINETUNE, drop_decode_cache, environment, timed  # noqa: E402
from common import CIFAR10, recipe_dict, scenarios, warm_up  # noqa: E402

SPACE = {
    "training.learning_rate": {"log_uniform": [1e-4, 1e-1]},
    "training.weight_decay": {"uniform": [0.0, 0.1]},
}


def run(side: str, scenario, work: Path, n: int, trials: int, log) -> dict:
    out = work / "runs" / f"{side}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    recipe = recipe_dict(scenario, work, out)
    if side == "search":
        recipe["search"] = SPACE
    path = work / f"{side}.json"
    path.write_text(json.dumps(recipe, indent=2))
    command = (
        [*FINETUNE, "search", str(path), "--trials", str(trials)] if side == "search"
        else [*FINETUNE, "train", "--recipe", str(path)]
    )
    drop_decode_cache(work)
    load = os.getloadavg()[0]
    wall, proc = timed(command, environment(work), log, f"{side} #{n}")
    if proc.returncode != 0:
        raise SystemExit(f"bench: {side} failed (exit {proc.returncode}); see {log.name}\n{proc.stderr[-2000:]}")
    final = out / "final" if side == "search" else out
    accuracy = json.loads((final / "eval_results.json").read_text())["eval_accuracy"]
    return {"wall_s": wall, "accuracy": accuracy, "load_before": load, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per command; the median is reported (default 3)")
    parser.add_argument("--trials", type=int, default=20, help="trials of the search (default 20)")
    parser.add_argument("--quick", action="store_true", help="the scenario at a fraction of its size (a smoke check)")
    parser.add_argument("--work", default=None, help="work folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    if not any(CIFAR10.glob("**/*.parquet")):
        print(f"bench: CIFAR-10 is missing: expected the Hub-layout copy at {CIFAR10}", file=sys.stderr)
        return 2
    scenario = next(s for s in scenarios(args.quick) if s.key == "a")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="finetune-search-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(environment(work))
    warm_up(work, [scenario])  # the parquet conversion and the built-in model's, outside every timing
    print(f"bench: {scenario.title}; {args.trials}-trial search against one run; {args.repeats} run(s) each; work {work}")
    results: dict[str, list[dict]] = {"single": [], "search": []}
    with (work / "search-bench.log").open("w") as log:
        for n in range(args.repeats):
            for side in ("single", "search"):
                result = run(side, scenario, work, n, args.trials, log)
                results[side].append(result)
                print(f"  {side:6} #{n}: {result['wall_s']:6.1f} s, test accuracy {result['accuracy']:.4f}, "
                      f"load {result['load_before']:.2f} -> {result['load_after']:.2f}", flush=True)
    single = statistics.median(r["wall_s"] for r in results["single"])
    search = statistics.median(r["wall_s"] for r in results["search"])
    ratio = search / single
    print("\n| command | wall time (median) | test accuracy (median) |\n|---|---|---|")
    for side, seconds in (("single", single), ("search", search)):
        accuracy = statistics.median(r["accuracy"] for r in results[side])
        label = "`finetune train` (one run)" if side == "single" else f"`finetune search --trials {args.trials}` (+ final run)"
        print(f"| {label} | {seconds:.1f} s | {accuracy:.4f} |")
    verdict = "holds" if ratio <= 2.0 else "MISSED"
    print(f"\nsearch / single = {ratio:.2f}x (target <= 2x: {verdict}); the log of every run is in {work / 'search-bench.log'}")
    return 0 if ratio <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
