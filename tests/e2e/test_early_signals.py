"""A SIGTERM or Ctrl-C before the first training step stops the run at once: the decode pass
of enough generated photos to take several seconds is stopped within a second or two (a
pre-emption's grace period is often 30 s), with one line and exit 143 or 130, and forked
decode workers print nothing; the decode cache keeps every piece that was finished, and the
rerun decodes only the rest.

The run is the real command line (``finetune.run.cli``) in a subprocess, with the pieces of
the decode pass made small (``decode_plan.PIECE_PIXELS``) so that a few seconds hold several.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
#: Source pixels per piece in these runs: 40 of the generated photos.
PIECE = 40 * 1024 * 768

RUN = """
import sys
sys.path.insert(0, sys.argv[1])
from finetune.data import decode_plan
decode_plan.PIECE_PIXELS = int(sys.argv[2])
sys.argv = ["finetune", *sys.argv[3:]]
from finetune.run import cli
cli()
"""


def _photos(root: Path, per_class: int) -> Path:
    """Smooth 1024×768 JPEGs (about 9 ms each to decode and resize on one core)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 1024, dtype=np.float32)[None, :, None]
    for c, name in enumerate(["red", "green", "blue"]):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.broadcast_to(ramp * rng.random(3, dtype=np.float32), (768, 1024, 3)).astype(np.uint8)
            pixels[..., c] = 200
            Image.fromarray(pixels).save(folder / f"{name}_{i}.jpg", quality=85)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _photos(tmp_path_factory.mktemp("photos") / "shots", per_class=200)


def _recipe(tmp_path: Path, model: Path, images: Path, workers: int | None) -> Path:
    recipe = {
        "description": "early signals",
        "model": {"name_or_path": str(model), "strategy": "full"},
        "data": {"dataset": str(images), "eval_split": None, "validation_fraction": 0.1,
                 "preprocessing_num_workers": workers, "augment": {"crop_scale": None, "hflip": False}},
        "training": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "use_cpu": True, "disable_tqdm": True},
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def _start(recipe: Path, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
               HF_DATASETS_CACHE=str(cache), OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", RUN, str(ROOT), str(PIECE), "train", "--recipe", str(recipe)]
    # A session of its own, as a terminal's job is: Ctrl-C goes to the whole process group.
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _pieces(cache: Path) -> dict[str, tuple[int, int]]:
    """The decode cache's finished files: name → (inode, modification time)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.rglob("cache-*.arrow")}


@pytest.mark.parametrize(
    "name, signum, exit_code, workers, group",
    [("SIGTERM", signal.SIGTERM, 143, None, False), ("Ctrl-C", signal.SIGINT, 130, 2, True)],
)
def test_a_signal_in_the_decode_pass_stops_at_once_and_the_rerun_reuses_the_decoded_pieces(
    photos: Path, tiny_vit: Path, tmp_path: Path, name: str, signum: int, exit_code: int, workers, group: bool
) -> None:
    cache = tmp_path / "hf-datasets"
    recipe = _recipe(tmp_path, tiny_vit, photos, workers)
    proc = _start(recipe, cache)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    # Two pieces of the train split finished: the pass is well under way.
    while len([n for n in _pieces(cache) if "_of_" not in n or n.endswith("_00001_of_00002.arrow")]) < 2:
        assert proc.poll() is None, "".join(lines)[-3000:]
        assert time.monotonic() < deadline, "the decode pass did not get going"
        time.sleep(0.05)
    assert not any("training: effective batch" in line for line in lines), "training started already"
    (os.killpg if group else os.kill)(proc.pid, signum)
    sent = time.monotonic()
    proc.wait(timeout=120)
    took = time.monotonic() - sent
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert proc.returncode == exit_code, stderr[-3000:]
    assert took < 10, f"{took:.1f} s from the signal to the exit"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    stops = [line for line in lines if line.startswith("finetune: ") and name in line]
    assert stops == [stops[-1]] and stderr.strip().splitlines()[-1] == stops[-1].strip()  # one line, the last
    assert stops[-1].strip() == (
        f"finetune: stopped by {name} before training started (nothing to checkpoint yet); run the same command "
        "again to continue: it trains again from the start (there is no checkpoint to resume from); the images "
        "decoded so far stay in the decode cache"
    )
    assert not list((tmp_path / "out").glob("checkpoint-*"))
    assert not [p for p in cache.rglob("tmp*") if p.is_file()], "a part-written temporary file was left"
    kept = _pieces(cache)
    assert kept

    again = _start(recipe, cache)
    _, rest = again.communicate(timeout=600)
    assert again.returncode == 0, rest[-3000:]
    after = _pieces(cache)
    assert {n: after[n] for n in kept} == kept  # every finished piece reused as it was, none decoded again
    assert len(after) > len(kept)
    assert json.loads((tmp_path / "out" / "data_report.json").read_text())["splits"]["train"]["images"] == 540


#: The run, with Ctrl-C sent to its process group the moment the decode pass's second
#: piece starts the ``Manager`` that ``datasets.map`` feeds its workers' results through.
RUN_MANAGER_STARTS = """
import os, signal, sys, time
from multiprocess import process
start, managers = process.BaseProcess.start, []
def hooked(self):
    start(self)
    if self.name.startswith("SyncManager"):
        managers.append(self)
        if len(managers) == 2:
            print(f"signal at {time.monotonic()}", file=sys.stderr, flush=True)
            os.killpg(0, signal.SIGINT)
process.BaseProcess.start = hooked
""" + RUN


def test_ctrl_c_while_the_decode_pass_starts_its_worker_manager_ends_the_process_at_once(
    photos: Path, tiny_vit: Path, tmp_path: Path
) -> None:
    # The Manager's start() interrupted leaves its server running (it is no daemon and
    # ignores Ctrl-C), and the interpreter's exit would join it forever after the line.
    recipe = _recipe(tmp_path, tiny_vit, photos, 2)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
               HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_MANAGER_STARTS, str(ROOT), str(PIECE), "train", "--recipe", str(recipe)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the run did not end after Ctrl-C") from None
    ended = time.monotonic()
    sent = float(re.search(r"signal at ([0-9.]+)", stderr).group(1))  # (on a progress bar's line)
    assert proc.returncode == 130, stderr[-3000:]
    assert ended - sent < 10, f"{ended - sent:.1f} s from the signal to the exit"
    assert stderr.strip().splitlines()[-1].startswith("finetune: stopped by Ctrl-C before training started")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode == 1  # nothing left
