"""On paper, from bench/streaming.py's measurements: where data.streaming "auto" switches, where streaming starts to pay, and the four figures projected to ImageNet-1k on one 8-GPU machine and on 4.

    python bench/streaming_projection.py [--work DIR] [--cores-per-machine 96] [--gpus-per-machine 8]

Reads ``WORK/streaming-last.jsonl`` (the last ``bench/streaming.py`` command's whole-command
runs, medians taken here) and
``WORK/streaming-costs.json`` (``bench/streaming.py costs``: CPU ms per image of each
path's own work, listing ms per image, bytes per image). Nothing here is measured: every
projected figure is a measured one at the bench's size plus ImageNet's extra images times
a measured per-image cost, and the assumptions (machine size, ImageNet's image size) are
printed with it. The GPUs' own training rate is not measured (no GPU on the bench
machine): projected images/s is the input pipeline's ceiling, which the training rate
cannot pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT

#: ImageNet-1k's train and validation images.
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
#: ImageNet-1k's mean image size as commonly cited (width × height); decode costs scale by
#: pixels from the bench set's measured mean.
IMAGENET_MEAN_PIXELS = 469 * 387
#: data.streaming "auto"'s limit (finetune.training.streamed_data.AUTO_CACHE_LIMIT).
AUTO_LIMIT = 20 * 10**9
#: The decode pass's processes on a big machine (finetune.data.decode: at most 8).
MAP_PROCESSES = 8


def medians(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    for key in sorted({(r["model"], r["path"]) for r in results}):
        runs = [r for r in results if (r["model"], r["path"]) == key]
        out[key] = {
            name: statistics.median(r[name] for r in runs if r.get(name) is not None)
            for name in runs[0]
            if isinstance(runs[0][name], (int, float)) and any(r.get(name) is not None for r in runs)
        }
    return out


def crossover(m: dict[str, float], epochs: int, images: int) -> str:
    """Where streaming's time to the end of ``epochs`` epochs meets the cache path's, as a
    number of training images: both grow linearly with the set (first step and epochs)."""
    fixed_s, fixed_c = m["stream_first"] - images * m["stream_list_s"], m["cache_first"] - images * m["cache_first_per_image"]
    per_s = m["stream_list_s"] + epochs / m["stream_ips"]
    per_c = m["cache_first_per_image"] + epochs / m["cache_ips"]
    if per_s >= per_c:
        return f"streaming never catches up over {epochs} epoch(s): {per_s * 1e3:.2f} ms an image against {per_c * 1e3:.2f}"
    n = (fixed_s - fixed_c) / (per_c - per_s)
    if n <= 0:
        return (f"streaming is faster at every size over {epochs} epoch(s): start-up {fixed_s:.1f} s against "
                f"{fixed_c:.1f} s, then {per_s * 1e3:.2f} ms an image against {per_c * 1e3:.2f}")
    return f"streaming is faster above about {n:,.0f} training images over {epochs} epoch(s)"


def project(rows: dict[tuple[str, str], dict[str, float]], costs: dict[str, float], model: str, cores: int,
            gpus: int, machines: int) -> list[str]:
    """One table row per path: first step (s), input ceiling (images/s), peak RSS (GB) and
    bytes written (GB) per machine, for ImageNet-1k on ``machines`` machines. Memory: one
    process a GPU, each its measured PSS plus its workers' (the largest one's PSS each)."""
    n_bench = costs["bench_train_images"] + costs["bench_test_images"]
    extra = IMAGENET_TRAIN + IMAGENET_VAL - n_bench
    scale = IMAGENET_MEAN_PIXELS / costs["bench_mean_pixels"]
    workers = max(1, cores // gpus - 1)  # finetune's default with an accelerator: all but one core a process
    out = []
    for path, worker_ms, list_ms in (
        ("stream", costs["stream_worker_ms"], costs["list_ms"]),
        ("cache", costs["cache_train_side_ms"], costs["list_ms"] + costs["cache_pass_ms"] * scale / MAP_PROCESSES),
        ("reference", costs["reference_worker_ms"], costs["reference_list_ms"]),
    ):
        m = rows.get((model, path))
        if m is None:
            continue
        # Every machine lists (and, on the cache path, decodes) the whole set itself: the
        # decode cache is per machine unless the machines share its file system.
        first = m["first_step_s"] + extra * list_ms / 1000
        if path == "cache":
            ceiling = "not input-bound (rows read from the cache; the crop runs on the GPU)"
        else:
            ceiling = f"{machines * gpus * workers * 1000 / (worker_ms * scale):,.0f}"
        rss = gpus * (m["main_pss_bytes"] + workers * m["worker_pss_bytes"]) / 1e9
        per_image = m["cache_bytes"] / n_bench
        written = (m["written_bytes"] - m["cache_bytes"] + per_image * (n_bench + extra)) / 1e9
        out.append(f"| {model} | {path} | {machines} | {first:,.0f} | {ceiling} | {rss:.1f} | {written:,.3f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(ROOT.parent / "bench-work"))
    parser.add_argument("--cores-per-machine", type=int, default=96)
    parser.add_argument("--gpus-per-machine", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10, help="for the crossover: epochs a run trains")
    args = parser.parse_args(argv)
    work = Path(args.work)
    results = [json.loads(line) for line in (work / "streaming-last.jsonl").read_text().splitlines() if line]
    costs = json.loads((work / "streaming-costs.json").read_text())
    images = max(r["images"] for r in results)
    rows = medians([r for r in results if r["images"] == images])
    per_image_cache = statistics.median(rows[k]["cache_bytes"] for k in rows if k[1] == "cache") / (
        costs["bench_train_images"] + costs["bench_test_images"]) if any(k[1] == "cache" for k in rows) else costs["cached_bytes"]
    print(f"measured at {images:,} training images; costs: " + ", ".join(f"{k} {v:,.2f}" for k, v in costs.items()))
    print(f"\ndata.streaming 'auto' switches at an estimated decode cache of {AUTO_LIMIT / 1e9:.0f} GB: about "
          f"{AUTO_LIMIT / costs['cached_bytes']:,.0f} images at 224 px by its estimate (3 bytes a pixel); the cache "
          f"measured here holds {per_image_cache / 1e3:,.1f} KB an image")
    for model in sorted({k[0] for k in rows}):
        if (model, "stream") not in rows or (model, "cache") not in rows:
            continue
        s, c = rows[(model, "stream")], rows[(model, "cache")]
        m = {"stream_first": s["first_step_s"], "stream_list_s": costs["list_ms"] / 1000, "stream_ips": s["images_per_s"],
             "cache_first": c["first_step_s"], "cache_ips": c["images_per_s"],
             "cache_first_per_image": (costs["list_ms"] + costs["cache_pass_ms"] / costs["bench_map_processes"]) / 1000}
        for epochs in (1, args.epochs):
            print(f"{model}: {crossover(m, epochs, images)}")
    print(f"\nImageNet-1k ({IMAGENET_TRAIN:,} + {IMAGENET_VAL:,} images, mean {IMAGENET_MEAN_PIXELS:,} pixels as "
          f"commonly cited), machines of {args.gpus_per_machine} GPUs and {args.cores_per_machine} cores, one process a "
          "GPU; per machine unless said; images/s is the input pipeline's ceiling over all machines:\n")
    print(f"The bench's JPEGs average {costs['jpeg_bytes'] / 1e3:,.0f} KB (upsampled CIFAR-10 is smoother than a "
          "photo); ImageNet's are larger for the same pixels, so its decode costs more than this pixel scaling says.\n")
    print("| model | path | machines | first step (s) | input ceiling (images/s) | peak memory a machine (GB, PSS) | "
          "written a machine (GB) |")
    print("|---|---|---|---|---|---|---|")
    for model in sorted({k[0] for k in rows}):
        for machines in (1, 4):
            print("\n".join(project(rows, costs, model, args.cores_per_machine, args.gpus_per_machine, machines)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
