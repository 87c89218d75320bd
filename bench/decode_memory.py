"""Peak memory of the decode pass on camera-sized photos, with 1, 2 and 8 workers, within its budget and as it was before one, the measurement behind ``decode_plan.DECODE_MEMORY``.

    python bench/decode_memory.py [--images 64] [--megapixels 12] [--workers 1 2 8] [--folder DIR]

Generates ``--images`` JPEGs of ``--megapixels`` (4:3, smooth gradients with noise, about a
camera's file size; kept in ``--folder`` for the next run), then for each worker count
decodes them through finetune's decode pass (``finetune.data.decode``, a ViT image
processor at 224 px) in a fresh process with a fresh ``datasets`` cache, twice:

- ``budget``: as finetune runs it (``decode_plan``: the memory budget, fewer workers when one
  photo would not fit a worker's share, the processor fed before a worker holds more);
- ``before``: without a budget (one map batch of up to 64 photos decoded whole per worker,
  every worker asked for), the pass as it was.

Prints the peak memory of the process and its workers together, as the sum of their
proportional set sizes (PSS: a page the forked workers share with the main process counts
once, split between them), sampled every 50 ms with psutil, and the time taken. The
``before`` rows can need several GB per worker: mind the machine's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def make_photos(folder: Path, count: int, megapixels: float) -> Path:
    import numpy as np
    from PIL import Image

    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(width * 3 / 4)
    target = folder / f"{count}x{megapixels:g}MP"
    if target.is_dir() and len(list(target.rglob("*.jpg"))) == count:
        return target
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    for i in range(count):
        name = ("a", "b")[i % 2]
        (target / name).mkdir(parents=True, exist_ok=True)
        pixels = np.broadcast_to(ramp * rng.random(3, dtype=np.float32), (height, width, 3)).astype(np.uint8)
        pixels = pixels + rng.integers(0, 24, (height, 1, 3), dtype=np.uint8)  # some texture per row
        Image.fromarray(pixels).save(target / name / f"{i:04d}.jpg", quality=90)
    return target


def child(folder: str, workers: int, before: bool) -> None:
    """One decode pass, in this process (its peak is measured from outside)."""
    sys.path.insert(0, str(ROOT))
    from transformers import ViTImageProcessor

    from finetune import data
    from finetune.data import decode_plan
    from finetune.recipe.schema import DataConfig

    if before:  # no budget: batches of 64, every worker asked for, each batch processed whole
        decode_plan.DECODE_MEMORY = 1 << 60
    raw = data.load_raw(DataConfig(dataset=folder))
    split = raw["train"]
    processor = ViTImageProcessor(size={"height": 224, "width": 224})
    started = time.monotonic()
    decoded = data.decode(split, processor, "image", "label", workers if workers > 1 else None, "bench")
    print(json.dumps({"seconds": time.monotonic() - started, "images": len(decoded.dataset)}))


def _tree_pss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def measure(folder: Path, workers: int, before: bool) -> tuple[float, float]:
    """(peak GB of the process tree, seconds of the decode pass)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, HF_DATASETS_CACHE=cache, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   FINETUNE_CACHE=cache)
        command = [sys.executable, __file__, "--child", str(folder), str(workers), "1" if before else "0"]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        watched, peak, done = psutil.Process(proc.pid), 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, _tree_pss(watched))
                except psutil.NoSuchProcess:
                    return
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, _ = proc.communicate()
        done.set()
        sampler.join()
        if proc.returncode != 0:
            raise SystemExit(f"the decode pass failed (exit {proc.returncode})")
        return peak / 1e9, json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "finetune-bench-photos")
    parser.add_argument("--skip-before", action="store_true", help="measure only the pass as finetune runs it")
    args = parser.parse_args()
    photos = make_photos(args.folder, args.images, args.megapixels)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.images} JPEGs of {args.megapixels:g} MP in {photos}; "
        f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 1e9:.0f} GB; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"{'workers':>7}  {'pass':>6}  {'peak (PSS)':>10}  {'time':>7}")
    for workers in args.workers:
        for before in ([False] if args.skip_before else [False, True]):
            peak, seconds = measure(photos, workers, before)
            print(f"{workers:>7}  {'before' if before else 'budget':>6}  {peak:>7.2f} GB  {seconds:>6.1f} s", flush=True)


if __name__ == "__main__":
    main()
