"""Headline benchmark: the documented commands, timed as whole processes from the shell.

    python bench/commands.py [--repeats 3] [--only a,b,startup] [--quick] [--work DIR]

What users run, the way they run it, on the machine's default threads:

- OURS is the README's command, ``accelerate launch finetune/run.py --recipe R.json``, with
  the recipe of a ``bench/pipeline.py`` scenario. Launcher, Python start, imports, the decode
  pass (cold: the decode cache is removed before every run), model load, training, the final
  evaluation, report pictures and card are all inside the time.
- REFERENCE is ``python bench/reference.py``, the design of transformers' image-classification
  example, as its users run it: ``python script.py``, imports and all.

Neither side gets ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` from this script (they are
removed from the environment it passes on), so each uses what its own command chooses. Wall
time is taken around the subprocess; accuracy and the Trainer's training images/s come from
each side's own output. Every figure is the median of ``--repeats`` runs, the sides taking
turns so that a noisy neighbour hits both. The load average is printed before and after each
run: on a shared machine, a ratio measured under another job's load is not a result.

Scenarios (from ``bench/pipeline.py``): (a) the linear probe of EfficientNet-Lite0 on 2,000
CIFAR-10 images at 96 px, target >= 8x the reference's wall time at equal or better accuracy;
(b) the full fine-tune of a tiny ViT at 224 px with crop and flip, target >= 2x the
reference's training images/s. ``startup`` times ``finetune --help``, ``finetune validate``,
a bad recipe's error through ``python`` and through ``accelerate launch`` (target < 2 s for
the first three), and the quickstart from the command to its first training step.

``bench/pipeline.py`` is the controlled variant (one thread, imports excluded) that explains
where the time goes; it is never the headline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CIFAR10, RESULT_TAG, ROOT, Scenario, recipe_dict, scenarios, warm_up  # noqa: E402

BIN = Path(sys.executable).parent
#: The console scripts users type; ``python -m`` forms where a script is not installed.
ACCELERATE = [str(BIN / "accelerate"), "launch"] if (BIN / "accelerate").exists() else [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]
FINETUNE = [str(BIN / "finetune")] if (BIN / "finetune").exists() else [sys.executable, "-m", "finetune.run"]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        HF_DATASETS_CACHE=str(work / "hf-datasets"),
    )
    return env


def drop_decode_cache(work: Path) -> None:
    """Our decode pass writes ``cache-*.arrow`` files next to the converted data set: remove
    them so each run decodes from scratch, as a user's first run does."""
    for path in (work / "hf-datasets").rglob("cache-*.arrow"):
        path.unlink()


def timed(command: list[str], env: dict[str, str], log, label: str) -> tuple[float, subprocess.CompletedProcess]:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write(f"===== {label} (exit {proc.returncode}, {wall:.1f} s, load {load:.2f}->{os.getloadavg()[0]:.2f})\n"
              f"$ {' '.join(command)}\n{proc.stdout}\n{proc.stderr}\n")
    log.flush()
    return wall, proc


def run_ours(s: Scenario, work: Path, n: int, log) -> dict[str, Any]:
    out = work / "runs" / f"ours-{s.key}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    recipe = work / f"ours-{s.key}.json"
    recipe.write_text(json.dumps(recipe_dict(s, work, out), indent=2))
    drop_decode_cache(work)
    load = os.getloadavg()[0]
    wall, proc = timed([*ACCELERATE, "finetune/run.py", "--recipe", str(recipe)], environment(work), log, f"ours {s.key} #{n}")
    if proc.returncode != 0:
        raise SystemExit(f"bench: ours {s.key} failed (exit {proc.returncode}); see {log.name}\n{proc.stderr[-2000:]}")
    train = json.loads((out / "train_results.json").read_text())
    final = json.loads((out / "eval_results.json").read_text())
    seconds = float(train["train_runtime"]) + float(train.get("feature_cache_runtime", 0.0))
    threads = re.search(r"(\d+) CPU thread", proc.stderr)
    return {
        "wall_s": wall,
        "train_images_per_s": s.n_train * s.epochs / seconds,
        "accuracy": float(final["eval_accuracy"]),
        "threads": int(threads.group(1)) if threads else None,
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def run_reference(s: Scenario, work: Path, n: int, log) -> dict[str, Any]:
    load = os.getloadavg()[0]
    command = [sys.executable, "bench/reference.py", "--scenario", json.dumps(asdict(s)), "--work", str(work)]
    wall, proc = timed(command, environment(work), log, f"reference {s.key} #{n}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"bench: reference {s.key} failed (exit {proc.returncode}); see {log.name}\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    return {
        "wall_s": wall,
        "train_images_per_s": result["train_images_per_s"],
        "accuracy": result["accuracy"],
        "threads": result.get("threads"),
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def first_step_seconds(work: Path, n: int, log) -> float:
    """The quickstart, from the command to the log line that starts training (the data is
    decoded, the model loaded, the Trainer built); the run is stopped there."""
    out = work / "runs" / f"quickstart-{n}"
    shutil.rmtree(out, ignore_errors=True)
    env = environment(work)
    env["FINETUNE_CACHE"] = str(work / "finetune-cache")
    command = [*ACCELERATE, "finetune/run.py", "--recipe", "recipes/quickstart.json", "--set", f"output_dir={out}"]
    start = time.perf_counter()
    # Its own process group, killed whole below: a SIGTERM to the launcher alone left the
    # training process running on after the measurement.
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    seen: list[str] = []
    seconds = float("nan")
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if "training: effective batch" in line:
            seconds = time.perf_counter() - start
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.write(f"===== quickstart to first step #{n}: {seconds:.1f} s\n{''.join(seen)}\n")
    if seconds != seconds:  # NaN: the line never came
        raise SystemExit(f"bench: the quickstart never reached training; see {log.name}")
    return seconds


def startup(work: Path, repeats: int, log) -> list[tuple[str, float]]:
    bad = work / "bad.json"
    bad.write_text(json.dumps({"description": "bad", "model": {"name_or_path": "x", "stratgy": "full"}}))
    env = environment(work)
    finetune = FINETUNE
    commands = {
        "finetune --help": [*finetune, "--help"],
        "finetune validate recipes/quickstart.json": [*finetune, "validate", "recipes/quickstart.json"],
        "python finetune/run.py --recipe BAD.json (error, exit 2)": [sys.executable, "finetune/run.py", "--recipe", str(bad)],
        "accelerate launch finetune/run.py --recipe BAD.json": [*ACCELERATE, "finetune/run.py", "--recipe", str(bad)],
    }
    rows = []
    for name, command in commands.items():
        times = [timed(command, env, log, name)[0] for _ in range(repeats)]
        rows.append((name, statistics.median(times)))
    # The one-off conversion of the built-in model is not part of a start: do it first.
    env["FINETUNE_CACHE"] = str(work / "finetune-cache")
    subprocess.run([sys.executable, "-c", "from finetune.models import builtin; builtin.resolve_model('builtin:efficientnet-lite0')"],
                   env=env, cwd=ROOT, check=True)
    firsts = [first_step_seconds(work, n, log) for n in range(repeats)]
    rows.append(("quickstart: command to first training step", statistics.median(firsts)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per side; the median is reported (default 3)")
    parser.add_argument("--only", default="a,b,startup", help="comma-separated among a, b, startup")
    parser.add_argument("--quick", action="store_true", help="the scenarios at a fraction of their size (a smoke check)")
    parser.add_argument("--work", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args(argv)
    if not any(CIFAR10.glob("**/*.parquet")):
        print(f"bench: CIFAR-10 is missing: expected the Hub-layout copy at {CIFAR10}", file=sys.stderr)
        return 2
    wanted = {k.strip() for k in args.only.split(",") if k.strip()}
    todo = [s for s in scenarios(args.quick) if s.key in wanted]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="finetune-commands-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(environment(work))
    print(f"bench: {', '.join(sorted(wanted))}; {args.repeats} run(s) per side; work folder {work}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)
    warm_up(work, todo)
    results: dict[str, Any] = {}
    lines: list[str] = []
    with (work / "commands.log").open("w") as log:
        for s in todo:
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], "reference": []}
            for n in range(args.repeats):
                for side, fn in (("reference", run_reference), ("ours", run_ours)):
                    res = fn(s, work, n, log)
                    runs[side].append(res)
                    print(f"  {s.key} {side:9s} #{n}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()})}", flush=True)
            results[s.key] = runs
            o, r = runs["ours"], runs["reference"]
            lines.append(f"{s.title}")
            lines.append(f"  wall time, s (median)      ours {median(o, 'wall_s'):8.1f}   reference {median(r, 'wall_s'):8.1f}   "
                         f"{median(r, 'wall_s') / median(o, 'wall_s'):.2f}x")
            lines.append(f"  training images/s (median) ours {median(o, 'train_images_per_s'):8.1f}   reference "
                         f"{median(r, 'train_images_per_s'):8.1f}   {median(o, 'train_images_per_s') / median(r, 'train_images_per_s'):.2f}x")
            lines.append(f"  eval accuracy (median)     ours {median(o, 'accuracy'):8.4f}   reference {median(r, 'accuracy'):8.4f}")
            lines.append(f"  wall times, s              ours {[round(x['wall_s'], 1) for x in o]}   reference {[round(x['wall_s'], 1) for x in r]}")
            lines.append(f"  threads                    ours {o[0]['threads']}   reference {r[0]['threads']}")
            loads = [x["load_before"] for x in o + r] + [x["load_after"] for x in o + r]
            lines.append(f"  load average               {min(loads):.2f}-{max(loads):.2f}")
        if "startup" in wanted:
            rows = startup(work, args.repeats, log)
            results["startup"] = rows
            lines.append("start-up (median wall time of the whole command, s)")
            lines += [f"  {name:58s} {seconds:6.2f}" for name, seconds in rows]
    print()
    print("\n".join(lines))
    if "a" in results:
        o, r = results["a"]["ours"], results["a"]["reference"]
        speed = median(r, "wall_s") / median(o, "wall_s")
        ok = speed >= 8 and median(o, "accuracy") >= median(r, "accuracy")
        print(f"(a) >= 8x the reference's wall time at equal or better accuracy: {speed:.2f}x -> {'MET' if ok else 'NOT MET'}")
    if "b" in results:
        o, r = results["b"]["ours"], results["b"]["reference"]
        speed = median(o, "train_images_per_s") / median(r, "train_images_per_s")
        print(f"(b) >= 2x the reference's training images/s: {speed:.2f}x -> {'MET' if speed >= 2 else 'NOT MET'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"quick": args.quick, "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
