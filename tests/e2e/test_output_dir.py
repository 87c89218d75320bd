"""The output folder through the command line: a folder in use, a full disk, a dead holder's lock,
a run that stopped before training."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.training.output_dir import (
    HOLDER_NAME,
    LOCK_NAME,
    OutputDirError,
    OutputLock,
    claim_output_dir,
)
from finetune.training.run_files import MANIFEST
from tests.helpers import ROOT
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.disk import leave_free
from tests.helpers.images import make_image_folder
from tests.helpers.recipes import output_recipe
from tests.helpers.runs import EXPECTED_FILES, folder_digest


@pytest.mark.e2e
def test_a_second_run_into_a_folder_in_use_stops_at_once(tmp_path: Path, tiny_vit: Path) -> None:
    """Two runs into one output_dir: the one that finds it locked stops, naming the other,
    and touches nothing."""

    images = make_image_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, out, training__num_train_epochs=1)
    out.mkdir()
    first = OutputLock(out).acquire()  # what a run holds from start to end, here held by this test
    first.write_holder()
    try:
        before = folder_digest(out)
        second = run_cli("--recipe", str(recipe))
        assert folder_digest(out) == before
    finally:
        first.release()
    assert second.returncode == 2, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    message = second.stderr.strip().splitlines()[-1]
    assert message.startswith(
        f"finetune: error: output_dir: '{out}' is in use by another finetune run "
        f"(pid {os.getpid()} on {socket.gethostname()}, started "
    )
    assert message.endswith("wait for it to finish or choose another output_dir (--set output_dir=...)")


@pytest.mark.e2e
def test_full_disk_is_one_line_and_each_rerun_continues(small_disk: Path, tmp_path: Path, tiny_vit: Path) -> None:
    """A real full file system: at a checkpoint (torch.save's own error), then at the final
    save (safetensors'); each time one line, exit 2, nothing half-written kept, and the same
    command continues once there is space."""
    images = make_image_folder(tmp_path / "images", per_class=8)
    out = small_disk / "out"
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, out)  # 2 epochs of 3 steps

    def disk_full_line(free: int, what: str, then: str) -> str:
        leave_free(small_disk, free)
        result = run_cli("--recipe", str(recipe))
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith(f"finetune: error: output_dir: the disk is full where '{out}' is ({what} needs about ")
        assert message.endswith(f"free some space and run the same command again: {then}")
        return message

    # checkpoint-3 (~360 KB: weights 100 KB, optimizer 225 KB, …) fits; checkpoint-6 does not.
    disk_full_line(540_000, "a checkpoint", f"it resumes from {out / 'checkpoint-3'}")
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]  # the cut-off checkpoint-6 is gone
    # checkpoint-6 fits now, the final model (100 KB) after it does not.
    then = f"it resumes from {out / 'checkpoint-6'}, where training ended, and only redoes what comes after training"
    disk_full_line(410_000, "the model", then)
    assert not (out / "model.safetensors").exists()

    (small_disk / "filler").unlink()
    third = run_cli("--recipe", str(recipe))
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-6'}" in third.stderr
    for name in EXPECTED_FILES:
        assert (out / name).is_file(), name


@pytest.mark.e2e
def test_a_run_that_stopped_before_training_does_not_block_the_folder(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "out"
    broken = write_recipe(tmp_path / "broken.json", tmp_path / "no-such-model", images, out)
    assert run_cli("--recipe", str(broken)).returncode == 2
    assert {p.name for p in out.iterdir()} <= {"recipe.json", "data_report.json", LOCK_NAME, MANIFEST}
    fixed = write_recipe(tmp_path / "fixed.json", tiny_vit, images, out, training__num_train_epochs=1)
    result = run_cli("--recipe", str(fixed))
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.e2e
def test_a_killed_holder_does_not_block_the_next_run(tmp_path: Path) -> None:
    """flock: the kernel drops the lock of a process that dies, kill -9 included."""
    out = tmp_path / "out"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from finetune.training.output_dir import OutputLock\n"
        "out = Path(sys.argv[1]); out.mkdir()\n"
        "lock = OutputLock(out).acquire()  # kept: a FileLock lets go when collected\n"
        "lock.write_holder()\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", script, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError, match=f"in use by another finetune run \\(pid {holder.pid} on "):
            OutputLock(out).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).exists() and (out / HOLDER_NAME).exists()  # stale files of the dead run
    lock, _ = claim_output_dir(output_recipe(out), overwrite=False)
    assert json.loads((out / HOLDER_NAME).read_text())["pid"] == os.getpid()
    lock.release()
