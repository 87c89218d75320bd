"""What the decode cache's size costs random crops: the small-data recipe with its training split stored at the model's size against stored large enough for its smallest crop.

    python bench/crop_resolution.py --dataset DIR [--repeats 1] [--work DIR] [--set KEY=VALUE ...]

The decode cache stores each image at the smaller of its own size and the model's, and the
training crops (``data.augment.crop_scale``) are cut from that copy: a crop of scale ``s``
is ``sqrt(s)`` of the model's side, upsampled. Stored at ``model side / sqrt(smallest s)``
instead (capped at the image's own size, as the cache always is), every crop has at least
the model's pixels. Both ways here, as ``recipes/cifar10_lite0_small.json`` runs (96 px,
crops of 60-100%), on ``--dataset``: an image folder of large images (``bench/streaming.py``
makes one from CIFAR-10 upsampled to 400-500 px; on CIFAR-10's own 32 px images both ways
store the same bytes, so nothing changes there). Each run is a fresh process with its own
``datasets`` cache; reported: test accuracy and the decode cache's size on disk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT  # noqa: E402

RECIPE = ROOT / "recipes" / "cifar10_lite0_small.json"


def one(way: str, recipe_path: str) -> int:
    """Train once, the training split stored the ``way`` given (in this process)."""
    sys.path.insert(0, str(ROOT))
    from finetune.models import classifier
    from finetune.recipe import load_recipe
    from finetune.training import prepared_data, train

    recipe = load_recipe(recipe_path)
    if way == "crop-size":
        decode = prepared_data.data.decode

        def larger(dataset, processor, image_column, label_column, workers, desc, *rest, **options):
            if desc == "decoding train":
                side = recipe.data.image_size or 224
                target = math.ceil(side / math.sqrt(recipe.data.augment.crop_scale[0]))
                processor = classifier.load_processor(recipe.model, target)
            return decode(dataset, processor, image_column, label_column, workers, desc, *rest, **options)

        prepared_data.data.decode = larger
    train.train(recipe, overwrite=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["one"]:
        return one(argv[1], argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="an image folder with train/ and test/")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", default=str(ROOT.parent / "bench-work"))
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE over the recipe's data/training keys")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    raw = json.loads(RECIPE.read_text())
    raw["data"].update(dataset=str(Path(args.dataset).resolve()), image_column=None, label_column=None)
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        raw[section][name] = json.loads(value)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"bench: {RECIPE.name} on {args.dataset}; {uptime}", flush=True)
    results: dict[str, list[dict]] = {"model-size": [], "crop-size": []}
    for n in range(args.repeats):
        for way in results:
            out, cache = work / "crop-runs" / f"{way}-{n}", work / f"hf-crop-{way}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            raw["output_dir"] = str(out)
            path = work / f"crop-{way}.json"
            path.write_text(json.dumps(raw, indent=2))
            env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(cache))
            proc = subprocess.run([sys.executable, __file__, "one", way, str(path)], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"bench: {way} failed\n{proc.stderr[-3000:]}")
            size = sum(f.stat().st_size for f in cache.rglob("cache-*.arrow"))
            accuracy = json.loads((out / "eval_results.json").read_text())["eval_accuracy"]
            results[way].append({"accuracy": accuracy, "cache_bytes": size})
            print(f"{way} #{n}: accuracy {accuracy:.4f}, decode cache {size / 1e6:.1f} MB", flush=True)
    for way, runs in results.items():
        print(f"{way}: accuracy {statistics.median(r['accuracy'] for r in runs):.4f}, "
              f"decode cache {statistics.median(r['cache_bytes'] for r in runs) / 1e6:.1f} MB (median of {len(runs)})")
    print(f"uptime at the end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
