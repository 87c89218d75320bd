"""CPU milliseconds per image of each path's own work in bench/streaming.py, and listing costs, for its projections.

    python bench/streaming.py costs [--work DIR]    # (the set made there first)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, TINY_VIT


def costs(work: Path, folder: Path, n_train: int, n: int = 300) -> dict[str, float]:
    """CPU milliseconds per image (one thread, ``time.process_time``: little moved by other
    jobs on the machine) of each path's own work on an image, for projections: streaming's
    worker (read, decode, crop from the original, flip), the decode cache's pass (read,
    decode, the processor's resize to 224, as the ``datasets.map`` runs it), the cache
    path's training side (the random crop of the cached 224 px copy, on the training
    process) and the usual example's worker (Pillow decode, torchvision's crop, flip,
    ``ToTensor``, ``Normalize``). Also the encoded and the cached bytes per image, the
    images' mean pixels, and the wall ms per image of listing the folder: finetune's
    listing, and ``datasets``' imagefolder loader (the usual example's), on the test split.
    Written to ``WORK/streaming-costs.json`` for bench/streaming_projection.py."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms as T
    from transformers import AutoImageProcessor

    sys.path.insert(0, str(ROOT))
    from finetune.data.decode import Decoder
    from finetune.data.streaming.images import ImagePipeline, decode_upright
    from finetune.data.transforms import BatchTransform
    from finetune.recipe.schema import AugmentConfig

    torch.set_num_threads(1)
    files = sorted((folder / "train").rglob("*.jpg"))[:n]
    processor = AutoImageProcessor.from_pretrained(work / TINY_VIT)
    augment = AugmentConfig(crop_scale=[0.08, 1.0], hflip=True)
    pipeline = ImagePipeline(processor, (224, 224), augment, 0)
    decoder = Decoder(processor, "", "")
    crop = BatchTransform([0.5] * 3, [0.5] * 3, (224, 224), augment)
    reference = T.Compose([T.RandomResizedCrop(224, scale=(0.08, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize([0.5] * 3, [0.5] * 3)])
    cached = torch.stack([decoder.pixels([Image.open(f).convert("RGB")])[0] for f in files[:64]])

    def clock(work_on_one) -> float:
        start = time.process_time()
        for i, f in enumerate(files):
            work_on_one(i, f)
        return 1000 * (time.process_time() - start) / len(files)

    out = {
        "stream_worker_ms": clock(lambda i, f: pipeline(decode_upright(str(f)), str(f), 0, True)),
        "cache_pass_ms": clock(lambda i, f: decoder.pixels([Image.open(f).convert("RGB")])),
        "cache_train_side_ms": clock(lambda i, f: crop(cached[i % 64 : i % 64 + 1], train=True, seed=i)),
        "reference_worker_ms": clock(lambda i, f: reference(Image.open(f).convert("RGB"))),
        "jpeg_bytes": float(np.mean([f.stat().st_size for f in files])),
        "cached_bytes": 3 * 224 * 224,
        "bench_mean_pixels": float(np.mean([w * h for w, h in (Image.open(f).size for f in files)])),
        **listing(work, folder),
        # The decode pass's processes on this machine (finetune.data.decode's rule).
        "bench_map_processes": min(os.cpu_count() or 1, 8) if n_train >= 4000 else 1,
    }
    (work / "streaming-costs.json").write_text(json.dumps(out, indent=1))
    for key, value in out.items():
        print(f"{key:22s} {value:,.2f}")
    return out


def listing(work: Path, folder: Path) -> dict[str, float]:
    """Wall ms per image of listing the image folder: finetune's (the whole folder) and
    ``datasets``' imagefolder loader (its test split, in a fresh cache)."""
    from datasets import load_dataset

    sys.path.insert(0, str(ROOT))
    from finetune.data.streaming.open import open_stream
    from finetune.recipe.schema import DataConfig

    start = time.perf_counter()
    source = open_stream(DataConfig(dataset=str(folder), eval_split="test"), ["train", "test"])
    ours = 1000 * (time.perf_counter() - start) / sum(len(split) for split in source.splits.values())
    cache = work / "hf-datasets-listing"
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    theirs = load_dataset("imagefolder", data_dir=str(folder / "test"), cache_dir=str(cache))["train"]
    seconds = time.perf_counter() - start
    shutil.rmtree(cache, ignore_errors=True)
    return {"list_ms": ours, "reference_list_ms": 1000 * seconds / len(theirs),
            "bench_train_images": float(len(source.splits["train"])), "bench_test_images": float(len(source.splits["test"]))}
