"""The decode pass's worker processes in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.mark.e2e
def test_decode_workers_finish_after_the_parent_ran_threaded_torch_ops(tmp_path: Path) -> None:
    # Forked map workers used to wait forever in their first multi-threaded torch op (the
    # processor's torch.stack of 64 images at 224 px) once the parent had started OpenMP
    # threads; in a subprocess, so a regression fails instead of hanging the suite.
    script = """
import torch
from datasets import Dataset, Features, Image, ClassLabel
from transformers import ViTImageProcessor
from PIL import Image as PIL
from finetune import data
torch.ones(512, 512) @ torch.ones(512, 512)
images = [PIL.new("RGB", (40 + i % 2, 40), (i, 0, 0)) for i in range(256)]  # two sizes: stored at 224 px
ds = Dataset.from_dict({"image": images, "label": [i % 2 for i in range(256)]},
                       features=Features({"image": Image(), "label": ClassLabel(names=["a", "b"])}))
decoded = data.decode(ds, ViTImageProcessor(size={"height": 224, "width": 224}), "image", "label", 2, "t")
print("rows", len(decoded.dataset), data.image_size(decoded.dataset))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail("data.decode with num_proc=2 did not finish in 300 s: its workers hang")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rows 256 (224, 224)" in result.stdout
