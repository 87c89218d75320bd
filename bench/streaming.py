"""Streaming against the decode cache and the usual design, on a set of large JPEGs, as whole commands.

    python bench/streaming.py [--images 20000] [--test-images 2000] [--repeats 3] [--workers 1]
                              [--models tiny,lite0] [--paths cache,stream,stream-wds,reference]
                              [--work DIR] [--cifar10 DIR]
    python bench/streaming.py readers [--work DIR]     # datasets' WebDataset loader vs the webdataset package
    python bench/streaming.py costs [--work DIR]       # CPU ms per image of each path's own work
    python bench/streaming_projection.py [--work DIR]  # the crossover and ImageNet-1k, from the last run

The set: CIFAR-10 images (``../shared/datasets/cifar10``) upsampled to 400-500 px on each side
(bicubic) and saved as JPEG at quality 90, as digital cameras and photo sites save photos:
an image folder (``train/CLASS/N.jpg``, ``test/...``) and the same images as WebDataset
shards of 1,000 (``train-00000.tar`` ...). Made once in the work folder.

Each measurement is one command, started and timed from here, the paths taking turns so a
noisy neighbour hits all of them:

- ``cache``: ``python finetune/run.py --recipe R`` with ``data.streaming`` false, its
  ``datasets`` cache emptied first (a user's first run: the decode pass included);
- ``stream`` / ``stream-wds``: the same with ``data.streaming`` true, on the folder / the tars;
- ``reference``: the usual Hugging Face example (transformers'
  ``run_image_classification.py``): ``load_dataset("imagefolder")``, ``set_transform`` with
  torchvision's ``RandomResizedCrop``, flip, ``ToTensor`` and ``Normalize`` on PIL images in
  the DataLoader workers, a plain ``Trainer`` (``python bench/streaming.py reference ...``).

All train one epoch, batch 64, crop scale 0.08-1 and flip, ``dataloader_num_workers`` =
``--workers`` on every path, no checkpoint, then score the test images once. Measured:
time from the command's start to the end of the first training step (the Trainer's first
log line, ``logging_steps`` 1), training images/s over the epoch (the Trainer's own),
peak RSS of the process and its workers together (sampled every 0.2 s), and bytes written:
what the data path leaves in the ``datasets`` cache, and what the process tree wrote in
all (``/proc/PID/io``'s ``write_bytes``, the output folder included). Medians of
``--repeats``; every run's figures and ``uptime`` go to ``WORK/streaming-results.jsonl``.
Then the per-image costs (bench/streaming_costs.py) and, from them and the medians, where
``auto`` switches, where streaming pays, and the projection to ImageNet-1k on one and on 4
machines of 8 GPUs (bench/streaming_projection.py).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CIFAR10, LITE0, ROOT, TINY_VIT, make_tiny_vit
from streaming_costs import costs

QUALITY = 90
SHARD = 1000


# --------------------------------------------------------------------------- the image set


def _encode(job: tuple[int, bytes, int, str]) -> tuple[str, int, bytes]:
    import numpy as np
    from PIL import Image

    index, data, label, split = job
    rng = np.random.default_rng(index)
    width, height = (int(v) for v in rng.integers(400, 501, size=2))
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height), Image.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY)
    return split, label, out.getvalue()


def make_set(work: Path, n_train: int, n_test: int, cifar10: Path = CIFAR10) -> tuple[Path, Path]:
    """The image folder and the WebDataset shards, made once (``work/jpeg-N``)."""
    import multiprocessing

    import pyarrow.parquet as pq

    root = work / f"jpeg-{n_train}-{n_test}"
    folder, wds = root / "folder", root / "wds"
    if (root / "done").is_file():
        return folder, wds
    shutil.rmtree(root, ignore_errors=True)
    names = json.loads(pq.ParquetFile(cifar10 / "plain_text" / "train-00000-of-00001.parquet").schema_arrow.metadata[
        b"huggingface"])["info"]["features"]["label"]["names"]
    jobs = []
    for split, count in (("train", n_train), ("test", n_test)):
        table = pq.read_table(cifar10 / "plain_text" / f"{split}-00000-of-00001.parquet").slice(0, count)
        images, labels = table.column("img").to_pylist(), table.column("label").to_pylist()
        jobs += [(len(jobs) + i, img["bytes"], label, split) for i, (img, label) in enumerate(zip(images, labels))]
    counters = {"train": 0, "test": 0}
    tars: dict[str, tarfile.TarFile] = {}
    with multiprocessing.Pool() as pool:
        for split, label, data in pool.imap(_encode, jobs, chunksize=64):
            n = counters[split]
            counters[split] += 1
            path = folder / split / names[label] / f"{n:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if n % SHARD == 0:
                if split in tars:
                    tars[split].close()
                wds.mkdir(parents=True, exist_ok=True)
                tars[split] = tarfile.open(wds / f"{split}-{n // SHARD:05d}.tar", "w")
            for ext, payload in (("jpg", data), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{n:06d}.{ext}")
                info.size = len(payload)
                tars[split].addfile(info, io.BytesIO(payload))
    for tar in tars.values():
        tar.close()
    (root / "done").write_text("")
    return folder, wds


# ------------------------------------------------------------------------ one measured run


class Sampler(threading.Thread):
    """Peak RSS summed over a process and its children, and bytes written by them; and the
    peak PSS of the process alone and of its largest child (forked workers share pages, which
    RSS counts in each and PSS divides among them: the projection's per-process figures)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.written, self.stop = pid, 0, {}, threading.Event()
        self.main_pss = self.worker_pss = 0

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            rss = 0
            for p in procs:
                try:
                    memory = p.memory_full_info()
                    self.written[p.pid] = max(self.written.get(p.pid, 0), p.io_counters().write_bytes)
                except psutil.Error:
                    continue
                rss += memory.rss
                if p.pid == self.pid:
                    self.main_pss = max(self.main_pss, memory.pss)
                else:
                    self.worker_pss = max(self.worker_pss, memory.pss)
            self.peak_rss = max(self.peak_rss, rss)
            time.sleep(0.2)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def measure(command: list[str], env: dict[str, str], log, label: str) -> dict[str, Any]:
    """Run ``command``; the seconds to its first training log line, its peak RSS, its bytes written."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    first, lines = None, []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if first is None and "'loss'" in line:
            first = time.perf_counter() - start
    proc.wait()
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    log.write(f"===== {label} (exit {proc.returncode}, {wall:.1f} s, load {load:.2f}->{os.getloadavg()[0]:.2f})\n"
              f"$ {' '.join(command)}\n{''.join(lines)}\n")
    log.flush()
    if proc.returncode != 0:
        raise SystemExit(f"bench: {label} failed (exit {proc.returncode}); see {log.name}\n{''.join(lines[-30:])}")
    return {"wall_s": wall, "first_step_s": first, "peak_rss_bytes": sampler.peak_rss,
            "main_pss_bytes": sampler.main_pss, "worker_pss_bytes": sampler.worker_pss,
            "written_bytes": sum(sampler.written.values()), "load_before": load, "load_after": os.getloadavg()[0]}


def training(workers: int, out: Path) -> dict[str, Any]:
    return {"num_train_epochs": 1, "per_device_train_batch_size": 64, "per_device_eval_batch_size": 64,
            "learning_rate": 1e-3, "eval_strategy": "no", "save_strategy": "no", "logging_steps": 1,
            "disable_tqdm": True, "dataloader_num_workers": workers, "seed": 42, "use_cpu": True,
            "report_to": "none", "output_dir": str(out)}


def run_ours(path: str, model: str, dataset: Path, work: Path, workers: int, n: int, log) -> dict[str, Any]:
    out, cache = work / "runs" / f"{path}-{model}-{n}", work / "hf-datasets"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    recipe = {
        "description": f"bench streaming: {path}, {model}",
        "model": {"name_or_path": str(work / TINY_VIT) if model == "tiny" else LITE0, "strategy": "full"},
        "data": {"dataset": str(dataset), "eval_split": "test", "validation_fraction": 0.0,
                 "streaming": path != "cache", "augment": {"crop_scale": [0.08, 1.0], "hflip": True}},
        "training": {k: v for k, v in training(workers, out).items() if k != "output_dir"},
        "output_dir": str(out),
    }
    if model == "lite0":
        recipe["data"]["image_size"] = 224
    file = work / f"{path}-{model}.json"
    file.write_text(json.dumps(recipe, indent=2))
    env = _env(cache)
    result = measure([sys.executable, "finetune/run.py", "--recipe", str(file)], env, log, f"{path} {model} #{n}")
    train = json.loads((out / "train_results.json").read_text())
    result.update(images_per_s=float(train["train_samples_per_second"]), cache_bytes=du(cache), output_bytes=du(out),
                  accuracy=json.loads((out / "eval_results.json").read_text())["eval_accuracy"])
    return result


def run_reference(model: str, folder: Path, work: Path, workers: int, n: int, log) -> dict[str, Any]:
    out, cache = work / "runs" / f"reference-{model}-{n}", work / "hf-datasets"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    command = [sys.executable, "bench/streaming.py", "reference", "--model", model, "--folder", str(folder),
               "--workers", str(workers), "--out", str(out), "--work", str(work)]
    result = measure(command, _env(cache), log, f"reference {model} #{n}")
    done = json.loads((out / "result.json").read_text())
    result.update(images_per_s=done["images_per_s"], cache_bytes=du(cache), output_bytes=du(out), accuracy=done["accuracy"])
    return result


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", HF_DATASETS_CACHE=str(cache))
    return env


def reference(args: argparse.Namespace) -> int:
    """The usual example's design, for the ``reference`` path (run as its own command)."""
    import numpy as np
    import torch
    from datasets import load_dataset
    from torchvision import transforms as T
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        Trainer,
        TrainingArguments,
    )

    sys.path.insert(0, str(ROOT))
    from finetune.models import builtin

    name = str(Path(args.work) / TINY_VIT) if args.model == "tiny" else builtin.resolve_model(LITE0)
    processor = AutoImageProcessor.from_pretrained(name)
    dataset = load_dataset("imagefolder", data_dir=args.folder)
    labels = dataset["train"].features["label"].names
    from finetune.data.decode import processor_normalization

    mean, std = processor_normalization(processor)
    normalize = T.Normalize(mean=mean, std=std)
    train_tf = T.Compose([T.RandomResizedCrop(224, scale=(0.08, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    eval_tf = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), normalize])

    def apply(transform):
        def batch(examples):
            examples["pixel_values"] = [transform(image.convert("RGB")) for image in examples["image"]]
            return examples

        return batch

    dataset["train"].set_transform(apply(train_tf))
    dataset["test"].set_transform(apply(eval_tf))

    def collate(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e["label"] for e in examples])}

    model = AutoModelForImageClassification.from_pretrained(
        name, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    settings = training(args.workers, Path(args.out))
    trainer = Trainer(model=model, args=TrainingArguments(remove_unused_columns=False, **settings),
                      train_dataset=dataset["train"], data_collator=collate,
                      compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, 1) == p.label_ids).mean())})
    result = trainer.train()
    trainer.save_model()
    final = trainer.evaluate(dataset["test"])
    (Path(args.out) / "result.json").write_text(json.dumps(
        {"images_per_s": float(result.metrics["train_samples_per_second"]), "accuracy": float(final["eval_accuracy"])}))
    return 0


# --------------------------------------------------------------------------------- readers


def readers(work: Path, wds: Path) -> None:
    """Images/s of reading the train tars without decoding: ``datasets``' WebDataset loader
    against the ``webdataset`` package."""
    from datasets import Image, load_dataset

    tars = sorted(str(p) for p in wds.glob("train-*.tar"))
    for name in ("datasets", "webdataset", "datasets", "webdataset"):
        start = time.perf_counter()
        if name == "datasets":
            ds = load_dataset("webdataset", data_files={"train": tars}, streaming=True)["train"]
            n = sum(1 for _ in ds.cast_column("jpg", Image(decode=False)))
        else:
            import webdataset

            n = sum(1 for _ in webdataset.WebDataset(tars, shardshuffle=False, empty_check=False))
        seconds = time.perf_counter() - start
        print(f"{name:10s} {n} samples in {seconds:.2f} s: {n / seconds:,.0f} samples/s (opening included)")


# ------------------------------------------------------------------------------------ main


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| model | path | first step (s) | train images/s | peak RSS (GB) | data cache (MB) | written (MB) | accuracy |",
            "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["path"]) for r in results}, key=lambda k: (k[0], k[1]))
    for model, path in keys:
        runs = [r for r in results if (r["model"], r["path"]) == (model, path)]

        def med(key: str) -> float:
            return statistics.median(r[key] for r in runs if r[key] is not None)

        rows.append(f"| {model} | {path} | {med('first_step_s'):.1f} | {med('images_per_s'):.1f} | "
                    f"{med('peak_rss_bytes') / 1e9:.2f} | {med('cache_bytes') / 1e6:.1f} | {med('written_bytes') / 1e6:.1f} | "
                    f"{med('accuracy'):.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reference"]:
        parser = argparse.ArgumentParser()
        for key in ("--model", "--folder", "--workers", "--out", "--work"):
            parser.add_argument(key, required=True)
        args = parser.parse_args(argv[1:])
        args.workers = int(args.workers)
        return reference(args)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "readers", "costs"])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--models", default="tiny,lite0")
    parser.add_argument("--paths", default="cache,stream,stream-wds,reference")
    parser.add_argument("--work", default=str(ROOT.parent / "bench-work"))
    parser.add_argument("--cifar10", default=str(CIFAR10), help="the Hub-layout CIFAR-10 copy the JPEGs are made from")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    folder, wds = make_set(work, args.images, args.test_images, Path(args.cifar10))
    if args.command == "readers":
        readers(work, wds)
        return 0
    make_tiny_vit(work / TINY_VIT)
    if args.command == "costs":
        costs(work, folder, args.images)
        return 0
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"bench: {args.images} train + {args.test_images} test JPEGs in {folder}; {uptime}", flush=True)
    results, log = [], open(work / "streaming.log", "a")
    # This command's runs alone, for bench/streaming_projection.py; every run's stay in the other.
    last = open(work / "streaming-last.jsonl", "w")
    with open(work / "streaming-results.jsonl", "a") as sink, last:
        for n in range(args.repeats):
            for model in args.models.split(","):
                for path in args.paths.split(","):
                    if path == "reference":
                        result = run_reference(model, folder, work, args.workers, n, log)
                    else:
                        result = run_ours(path, model, wds if path == "stream-wds" else folder, work, args.workers, n, log)
                    result.update(model=model, path=path, repeat=n, images=args.images, workers=args.workers,
                                  uptime=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
                    for file in (sink, last):
                        file.write(json.dumps(result) + "\n")
                        file.flush()
                    results.append(result)
                    print(f"{model} {path} #{n}: first step {result['first_step_s']:.1f} s, "
                          f"{result['images_per_s']:.1f} images/s, load {result['load_before']:.1f}", flush=True)
    print(table(results))
    costs(work, folder, args.images)
    import streaming_projection

    streaming_projection.main(["--work", str(work)])
    print(f"uptime at the end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
