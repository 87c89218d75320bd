"""`finetune inspect` on real CIFAR-10: known label flips and planted duplicates found, against a plain baseline, and the time.

(Named so, not bench/inspect.py: a script of that name would shadow the standard library's
``inspect``, which numpy and torch import, for every script in this folder.)

    python bench/inspection.py [--seeds 3] [--flips 0.05] [--plants 50] [--work DIR] [--full] [--json FILE]

Part A, per seed (``--seeds``): 2,000 training images of ``../shared/datasets/cifar10``
(200 per class, the same for every seed) with 5 % of their labels changed to another class
at random (seeded), and a test split of 1,000 CIFAR-10 test images plus ``--plants`` copies
of training images of each of three kinds: the same file (exact), saved again as a JPEG at
quality 75, and resized to 28×28 then saved as a JPEG at quality 75. Both are written as a
data set in the Hub's parquet layout, which a recipe names. Then:

- BASELINE: the built-in EfficientNet-Lite0's features at 96 px (finetune's own feature
  pass, one view), a plain 5-fold ``sklearn.linear_model.LogisticRegression`` (default
  settings, stratified seeded folds) for out-of-fold probabilities, the images ranked by
  the probability of their given label; how many of the 100 flips are among its 100 most
  suspect images.
- OURS: ``python finetune/run.py inspect RECIPE`` (the command as a user runs it, in a
  subprocess, decode cache removed first) with its defaults (two views: the image and its
  mirror image), and again with ``--no-mirror``: the flips among the first 100 rows of
  ``label_issues.csv``, and the planted copies among the test images it reports as
  duplicating a training image (``duplicates.csv``), per kind; and its wall time.

Part C (``--threshold-study``): where the near-duplicate threshold comes from. 5,000 CIFAR-10
training images, and copies of the first 1,000 of six kinds (JPEG at quality 75 or 50,
resized to 28 or 40 px then JPEG 75, mirrored, cropped by 2 px a side and resized back):
each copy's similarity to its original in both views (thumbnails, the backbone's features
with the mirror view averaged in), against every original's similarity to its nearest
other original (distinct images; CIFAR-10's own few duplicates among them).

Part B (``--full``): ``finetune inspect`` of all of CIFAR-10 (50,000 training and 10,000 test
images) at 96 px, timed, its counts printed and its report left in WORK/full/inspect for
looking at by eye.

The load average is printed around every timed command: figures taken on a busy machine
are not comparable with a quiet one's.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CIFAR10 = ROOT.parent / "shared" / "datasets" / "cifar10"
LITE0 = "builtin:efficientnet-lite0"
FINETUNE = [sys.executable, str(ROOT / "finetune" / "run.py")]
KINDS = ("exact", "jpeg75", "resize28+jpeg75")
N_TRAIN, N_TEST, SIZE = 2000, 1000, 96


def environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return env | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                  "HF_DATASETS_CACHE": str(work / "hf-datasets")}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(command: list[str], work: Path, log) -> tuple[float, subprocess.CompletedProcess]:
    for path in (work / "hf-datasets").rglob("cache-*.arrow"):
        path.unlink()  # decode from scratch, as a user's first run does
    before = load()
    start = time.perf_counter()
    proc = subprocess.run(command, env=environment(work), cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write(f"===== exit {proc.returncode}, {wall:.1f} s, load {before} -> {load()}\n$ {' '.join(command)}\n{proc.stdout}\n{proc.stderr[-20000:]}\n")
    log.flush()
    print(f"  {wall:7.1f} s  (load average {before} -> {load()})  {' '.join(command[1:3])} ...", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench: command failed (exit {proc.returncode}); see {log.name}\n{proc.stderr[-3000:]}")
    return wall, proc


# ------------------------------------------------------------------------------ data


def jpeg(image, quality: int = 75) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def build(work: Path, seed: int, flip_share: float, plants: int) -> dict[str, Any]:
    """The data set of part A for one seed; returns the flipped training rows and the planted
    test rows by kind."""
    from datasets import ClassLabel, Dataset, Features, Image, load_dataset
    from PIL import Image as PILImage

    raw = load_dataset(str(CIFAR10))
    names = raw["train"].features["label"].names
    pick = np.random.default_rng(0)  # the same 2,000 and 1,000 images for every seed
    train_labels = np.asarray(raw["train"]["label"])
    rows = np.sort(np.concatenate([pick.choice(np.flatnonzero(train_labels == c), N_TRAIN // 10, replace=False) for c in range(10)]))
    train = raw["train"].cast_column("img", Image(decode=False)).select(rows)
    test = raw["test"].cast_column("img", Image(decode=False)).select(np.sort(pick.choice(len(raw["test"]), N_TEST, replace=False)))
    rng = np.random.default_rng(seed)
    labels = np.asarray(train["label"])
    flipped = np.sort(rng.choice(N_TRAIN, int(round(flip_share * N_TRAIN)), replace=False))
    given = labels.copy()
    given[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10
    images = train["img"]
    sources = rng.choice(N_TRAIN, plants * len(KINDS), replace=False)
    planted: dict[str, list[int]] = {k: [] for k in KINDS}
    test_images, test_labels = list(test["img"]), list(test["label"])
    for k, i in enumerate(sources):
        kind = KINDS[k // plants]
        data = images[i]["bytes"]
        if kind != "exact":
            picture = PILImage.open(io.BytesIO(data)).convert("RGB")
            if kind.startswith("resize"):
                picture = picture.resize((28, 28), PILImage.Resampling.BILINEAR)
            data = jpeg(picture)
        planted[kind].append(len(test_images))
        test_images.append({"bytes": data, "path": None})
        test_labels.append(int(labels[i]))  # the copy keeps the image's true class
    folder = work / f"cifar10-flipped-{seed}" / "plain_text"
    folder.mkdir(parents=True, exist_ok=True)
    features = Features({"img": Image(), "label": ClassLabel(names=names)})
    Dataset.from_dict({"img": images, "label": given.tolist()}, features=features).to_parquet(folder / "train-00000-of-00001.parquet")
    Dataset.from_dict({"img": test_images, "label": test_labels}, features=features).to_parquet(folder / "test-00000-of-00001.parquet")
    return {"dataset": folder.parent, "flipped": set(flipped.tolist()), "planted": planted, "given": given, "names": names}


# -------------------------------------------------------------------------- baseline


def baseline(dataset: Path, given: np.ndarray, flipped: set[int], seed: int) -> dict[str, Any]:
    """Lite0 features at 96 px (finetune's feature pass, one view) and a plain 5-fold
    LogisticRegression: how many flips among its 100 lowest p(given)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from finetune import data
    from finetune.models.classifier import load_processor
    from finetune.probe.backbone import backbone_features
    from finetune.recipe import DataConfig, ModelConfig

    model = ModelConfig(name_or_path=LITE0, strategy="linear_probe")
    processor = load_processor(model, SIZE)
    raw = data.load_raw(DataConfig(dataset=str(dataset)))["train"]
    decoded = data.decode(raw, processor, "img", "label", None, "decoding (baseline)").dataset
    assert len(decoded) == len(given)
    start = time.perf_counter()
    x = backbone_features(model, [str(i) for i in range(10)], processor, [decoded], mirror=False).features[0].numpy()
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    probs = np.zeros((len(given), 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for train, held in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, given):
            probs[held] = LogisticRegression(max_iter=1000).fit(x[train], given[train]).predict_proba(x[held])
    fit_s = time.perf_counter() - start
    order = np.argsort(probs[np.arange(len(given)), given], kind="stable")[:100]
    return {"top100": len(set(order.tolist()) & flipped), "features_s": round(features_s, 1), "fit_s": round(fit_s, 1),
            "accuracy": float((probs.argmax(1) == given).mean())}


# ------------------------------------------------------------------------------ ours


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ours(work: Path, built: dict[str, Any], seed: int, extra: list[str], log) -> dict[str, Any]:
    out = work / "runs" / f"seed{seed}{'-'.join([''] + [e.strip('-') for e in extra])}"
    shutil.rmtree(out, ignore_errors=True)
    recipe = work / f"recipe-{out.name}.json"
    recipe.write_text(json.dumps({
        "description": f"bench/inspection.py: 2,000 CIFAR-10 training images, 5% of labels flipped (seed {seed}), planted test duplicates",
        "model": {"name_or_path": LITE0, "strategy": "linear_probe"},
        "data": {"dataset": str(built["dataset"]), "image_column": "img", "label_column": "label", "image_size": SIZE},
        "training": {"seed": 42},
        "output_dir": str(out),
    }))
    wall, _ = timed([*FINETUNE, "inspect", str(recipe), *extra], work, log)
    report = out / "inspect"
    issues = [r for r in read_csv(report / "label_issues.csv") if r["part"] == "train"]
    top = {int(r["row"]) for r in issues[:100]}
    flagged = {int(r["row"]) for r in issues}
    leaked = {int(r["row_b"]) for r in read_csv(report / "duplicates.csv") if r["where"] == "train → test"}
    planted = built["planted"]
    every = {i for rows in planted.values() for i in rows}
    summary = json.loads((report / "summary.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "top100": len(top & built["flipped"]),
        "flagged": len(flagged),
        "flips_flagged": len(flagged & built["flipped"]),
        "duplicates_found": {k: len(leaked & set(v)) for k, v in planted.items()},
        "duplicates_recall": len(leaked & every) / len(every),
        "other_test_images_reported": len(leaked - every),
        "probe_l2": summary["settings"]["probe_l2"],
        "seconds": summary["seconds"],
    }


def threshold_study(n: int = 5000, copies: int = 1000) -> dict[str, Any]:
    """Part C: similarities of copies to their originals, and of distinct images, per view."""
    import torch
    from datasets import ClassLabel, Dataset, Features, Image, load_dataset
    from PIL import Image as PILImage

    from finetune import data
    from finetune.models.classifier import load_processor
    from finetune.probe.backbone import backbone_features
    from finetune.probe.neighbours import nearest, normalise
    from finetune.recipe import ModelConfig

    raw = load_dataset(str(CIFAR10))["train"].select(range(n))
    names = raw.features["label"].names
    originals = [im.convert("RGB") for im in raw["img"]]
    reopen = lambda b: PILImage.open(io.BytesIO(b)).convert("RGB")  # noqa: E731
    kinds = {
        "jpeg75": lambda im: reopen(jpeg(im)),
        "jpeg50": lambda im: reopen(jpeg(im, 50)),
        "resize28+jpeg75": lambda im: reopen(jpeg(im.resize((28, 28), PILImage.Resampling.BILINEAR))),
        "resize40+jpeg75": lambda im: reopen(jpeg(im.resize((40, 40), PILImage.Resampling.BILINEAR))),
        "mirror": lambda im: im.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT),
        "crop2+resize": lambda im: im.crop((2, 2, 30, 30)).resize((32, 32), PILImage.Resampling.BILINEAR),
    }
    model = ModelConfig(name_or_path=LITE0, strategy="linear_probe")
    processor = load_processor(model, SIZE)
    features = Features({"img": Image(), "label": ClassLabel(names=names)})
    sets = [originals] + [[make(im) for im in originals[:copies]] for make in kinds.values()]
    decoded = [
        data.decode(Dataset.from_dict({"img": images, "label": raw["label"][: len(images)]}, features=features),
                    processor, "img", "label", None, f"decoding set {k}").dataset
        for k, images in enumerate(sets)
    ]
    pixels = [data.signatures(d, processor).thumbnails for d in decoded]
    feats = [normalise(f) for f in backbone_features(model, names, processor, decoded, mirror=True).features]
    out: dict[str, Any] = {"images": n, "copies": copies, "views": {}}
    for view, vectors in (("pixels", pixels), ("features", feats)):
        base = vectors[0]
        nn = nearest(base, base, 1, same=True)[0][:, 0].numpy()
        entry = {"distinct_nearest": {f"p{q}": round(float(np.percentile(nn, q)), 4) for q in (50, 99, 99.9)} | {"max": round(float(nn.max()), 4)}}
        entry["distinct_at_or_above"] = {t: int((nn >= t).sum()) for t in (0.9, 0.93, 0.95, 0.97)}
        for kind, copied in zip(kinds, vectors[1:]):
            sim = (copied * base[:copies]).sum(1).numpy()
            entry[kind] = {"p1": round(float(np.percentile(sim, 1)), 4), "median": round(float(np.median(sim)), 4),
                           "found_at": {t: round(float((sim >= t).mean()), 3) for t in (0.9, 0.93, 0.95, 0.97)}}
        out["views"][view] = entry
    either = {}
    for t in (0.9, 0.93, 0.95, 0.97):
        found = {kind: round(float((((pixels[k + 1] * pixels[0][:copies]).sum(1) >= t) | ((feats[k + 1] * feats[0][:copies]).sum(1) >= t)).float().mean()), 3)
                 for k, kind in enumerate(kinds)}
        both = torch.maximum(nearest(pixels[0], pixels[0], 1, same=True)[0][:, 0], nearest(feats[0], feats[0], 1, same=True)[0][:, 0])
        either[t] = {"copies_found": found, "distinct_at_or_above": int((both >= t).sum())}
    out["either_view"] = either
    return out


def full(work: Path, log) -> dict[str, Any]:
    out = work / "full"
    shutil.rmtree(out, ignore_errors=True)
    recipe = work / "recipe-full.json"
    recipe.write_text(json.dumps({
        "description": "bench/inspection.py: all of CIFAR-10 (50,000 training, 10,000 test images), EfficientNet-Lite0 at 96 px",
        "model": {"name_or_path": LITE0, "strategy": "linear_probe"},
        "data": {"dataset": str(CIFAR10), "image_column": "img", "label_column": "label", "image_size": SIZE},
        "training": {"seed": 42},
        "output_dir": str(out),
    }))
    wall, proc = timed([*FINETUNE, "inspect", str(recipe)], work, log)
    summary = json.loads((out / "inspect" / "summary.json").read_text())
    print("\n".join("    " + line for line in proc.stdout.strip().splitlines()))
    return {"wall_s": round(wall, 1), "seconds": summary["seconds"], "parts": summary["parts"], "report": str(out / "inspect" / "report.md")}


def main(argv: list[str] | None = None) -> int:
    global CIFAR10
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="flip seeds of part A (default 3)")
    parser.add_argument("--flips", type=float, default=0.05, help="share of training labels flipped (default 0.05)")
    parser.add_argument("--plants", type=int, default=50, help="planted test copies of each kind (default 50)")
    parser.add_argument("--work", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--full", action="store_true", help="also part B: all of CIFAR-10, timed")
    parser.add_argument("--only-full", action="store_true", help="part B alone")
    parser.add_argument("--threshold-study", action="store_true", help="part C alone: where the near-duplicate threshold comes from")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--data", default=str(CIFAR10), help=f"the CIFAR-10 copy (default {CIFAR10})")
    args = parser.parse_args(argv)
    CIFAR10 = Path(args.data)
    if not any(CIFAR10.glob("**/*.parquet")):
        raise SystemExit(f"bench: no CIFAR-10 at {CIFAR10}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-inspect-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from finetune.models import builtin

    builtin.resolve_model(LITE0)  # converted once, outside any timing
    print(f"bench/inspection.py: work folder {work}; {os.cpu_count()} CPUs; load average {load()}", flush=True)
    results: dict[str, Any] = {"seeds": {}, "load_start": load()}
    if args.threshold_study:
        start = time.perf_counter()
        results["threshold_study"] = study = threshold_study()
        print(f"part C: {study['images']:,} CIFAR-10 images, copies of {study['copies']:,} ({time.perf_counter() - start:.0f} s)")
        for view, entry in study["views"].items():
            print(f"  {view}: distinct images' nearest {entry['distinct_nearest']}, at or above t: {entry['distinct_at_or_above']}")
            for kind in [k for k in entry if k not in ("distinct_nearest", "distinct_at_or_above")]:
                print(f"    {kind:16s} p1 {entry[kind]['p1']:.4f} median {entry[kind]['median']:.4f} found at t: {entry[kind]['found_at']}")
        for t, entry in study["either_view"].items():
            print(f"  either view >= {t}: copies found {entry['copies_found']}; distinct images at or above: {entry['distinct_at_or_above']}")
    with (work / "bench.log").open("a") as log:
        if not args.only_full and not args.threshold_study:
            for seed in range(args.seeds):
                print(f"seed {seed}:", flush=True)
                built = build(work, seed, args.flips, args.plants)
                r = {"baseline": baseline(built["dataset"], built["given"], built["flipped"], seed)}
                r["ours"] = ours(work, built, seed, [], log)
                r["ours_no_mirror"] = ours(work, built, seed, ["--no-mirror"], log)
                results["seeds"][seed] = r
                b, o, m = r["baseline"], r["ours"], r["ours_no_mirror"]
                print(f"  flips among the 100 most suspect: baseline {b['top100']}, ours {o['top100']} (one view: {m['top100']}); "
                      f"planted copies found: {o['duplicates_found']} = {100 * o['duplicates_recall']:.0f}%, "
                      f"other test images reported {o['other_test_images_reported']}", flush=True)
            seeds = results["seeds"].values()
            mean = lambda key, side: statistics.mean(s[side][key] for s in seeds)  # noqa: E731
            print("\npart A: 2,000 CIFAR-10 training images, 100 labels flipped; 1,000 test images + "
                  f"{3 * args.plants} planted copies ({args.seeds} seed(s))")
            print(f"  flips among the 100 most suspect (mean)   baseline {mean('top100', 'baseline'):.1f}   "
                  f"ours {mean('top100', 'ours'):.1f}   ours, one view {mean('top100', 'ours_no_mirror'):.1f}")
            print(f"  planted copies found (mean)               {100 * mean('duplicates_recall', 'ours'):.1f}%  "
                  f"(by kind, summed: {dict((k, sum(s['ours']['duplicates_found'][k] for s in seeds)) for k in KINDS)} of {args.plants * args.seeds} each)")
            print(f"  wall time of the command (median)         ours {statistics.median(s['ours']['wall_s'] for s in seeds):.1f} s   "
                  f"one view {statistics.median(s['ours_no_mirror']['wall_s'] for s in seeds):.1f} s")
        if args.full or args.only_full:
            print("part B: all of CIFAR-10", flush=True)
            results["full"] = full(work, log)
    results["load_end"] = load()
    print(f"load average at the end: {results['load_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
