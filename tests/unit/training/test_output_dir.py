"""output_dir.py: a path under a file, the lock one run holds on the folder, and a full disk as one line."""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import pytest
import torch

from finetune.training.output_dir import (
    HOLDER_NAME,
    LOCK_NAME,
    DiskFullError,
    OutputDirError,
    check_output_dir,
    claim_output_dir,
    disk_full_is_a_user_error,
    what_a_rerun_does,
)
from finetune.utils.errors import UserError
from tests.helpers.disk import leave_free
from tests.helpers.recipes import output_recipe


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fake_checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint folder as outputs.checkpoint_is_complete reads one."""
    from safetensors.torch import save_file

    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, path / "model.safetensors")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


# ------------------------------------------------------------------ where the folder is


def test_output_dir_below_a_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(OutputDirError) as err:
        claim_output_dir(output_recipe(afile / "sub" / "deeper"), overwrite=False)
    message = str(err.value)
    assert "\n" not in message and f"'{afile}' is a file" in message
    assert afile.read_text() == "not a folder"


def test_output_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputDirError, match="is a file; name a folder"):
        check_output_dir(output_recipe(afile), overwrite=False)


# ------------------------------------------------------------------ the lock


def test_a_second_run_stops_at_once_naming_the_first(tmp_path: Path) -> None:
    out = tmp_path / "out"
    lock, resume = claim_output_dir(output_recipe(out), overwrite=False)
    try:
        assert resume is None and (out / LOCK_NAME).is_file()
        holder = json.loads((out / HOLDER_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(OutputDirError) as err:  # at once: the lock's timeout is 0
            claim_output_dir(output_recipe(out, learning_rate=0.5), overwrite=True)  # even --overwrite waits its turn
        message = str(err.value)
        assert f"is in use by another finetune run (pid {os.getpid()} on {socket.gethostname()}, started" in message
        assert "wait for it to finish or choose another output_dir" in message and "\n" not in message
    finally:
        lock.release()
    # Released: the holder's details go, the (empty) lock file stays and hides nothing.
    assert {p.name for p in out.iterdir()} == {LOCK_NAME}
    lock, _ = claim_output_dir(output_recipe(out), overwrite=False)
    lock.release()


def test_lock_files_do_not_make_a_folder_foreign_and_a_foreign_folder_gets_none(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputDirError, match=r"did not make \(thesis.tex\)"):
        claim_output_dir(output_recipe(mine), overwrite=False)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]  # no lock file left in it

    fresh = tmp_path / "fresh"
    lock, _ = claim_output_dir(output_recipe(fresh), overwrite=False)
    lock.release()
    (fresh / "thesis.tex").write_text("x")
    with pytest.raises(OutputDirError, match=r"did not make \(thesis.tex\)"):  # the lock file is not named
        check_output_dir(output_recipe(fresh), overwrite=False)


def test_a_refused_run_leaves_a_locked_once_folder_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "out"
    lock, _ = claim_output_dir(output_recipe(out), overwrite=False)
    (out / "recipe.json").write_text(json.dumps(output_recipe(out).to_dict()))
    _fake_checkpoint(out, 3)
    lock.release()
    before = _digest(out)
    with pytest.raises(OutputDirError, match="different recipe"):
        claim_output_dir(output_recipe(out, learning_rate=0.5), overwrite=False)
    assert _digest(out) == before
    lock, resume = claim_output_dir(output_recipe(out), overwrite=False)  # the same recipe resumes
    lock.release()
    assert resume == str(out / "checkpoint-3")
    lock, resume = claim_output_dir(output_recipe(out, learning_rate=0.5), overwrite=True)
    lock.release()
    assert resume is None and not list(out.glob("checkpoint-*"))  # removed under the lock


def test_a_run_from_before_new_recipe_keys_still_resumes(tmp_path: Path) -> None:
    """recipe.json written by an earlier finetune lacks the keys added since (their defaults
    keep the old behaviour): the same recipe resumes; a key set away from its default, or a
    changed old key, is still a different recipe."""
    out = tmp_path / "out"
    lock, _ = claim_output_dir(output_recipe(out), overwrite=False)
    old = output_recipe(out).to_dict()
    del old["model"]["layer_decay"], old["data"]["augment"]["mixup_alpha"], old["search"]
    (out / "recipe.json").write_text(json.dumps(old))
    _fake_checkpoint(out, 3)
    lock.release()
    lock, resume = claim_output_dir(output_recipe(out), overwrite=False)
    lock.release()
    assert resume == str(out / "checkpoint-3")
    changed = output_recipe(out)
    changed.model.layer_decay = 0.75
    with pytest.raises(OutputDirError, match=r"different recipe \(model.layer_decay: null → 0.75\)"):
        check_output_dir(changed, overwrite=False)
    with pytest.raises(OutputDirError, match="training.learning_rate"):
        check_output_dir(output_recipe(out, learning_rate=0.5), overwrite=False)


def test_lock_files_are_never_uploaded(tmp_path: Path) -> None:
    from finetune.publish.hub import planned_files

    out = tmp_path / "out"
    lock, _ = claim_output_dir(output_recipe(out), overwrite=False)
    try:
        (out / "config.json").write_text("{}")
        assert (out / HOLDER_NAME).is_file()
        assert planned_files(out) == ["config.json"]
    finally:
        lock.release()


# ------------------------------------------------------------------ a full disk


def _raise(err: BaseException):
    raise err


def test_enospc_becomes_one_line_naming_folder_sizes_and_rerun(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _fake_checkpoint(out, 3)
    cut_off = _fake_checkpoint(out, 6, complete=False)  # what the failed save left
    with pytest.raises(DiskFullError) as err:
        with disk_full_is_a_user_error(out, "a checkpoint", 3_000_000, final_step=9):
            _raise(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(cut_off / "optimizer.pt")))
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message
    assert message.startswith(f"output_dir: the disk is full where '{out}' is (a checkpoint needs about 3.0 MB, ")
    assert " free); free some space and run the same command again: " in message
    assert message.endswith(f"it resumes from {out / 'checkpoint-3'}")
    assert not cut_off.exists() and (out / "checkpoint-3").is_dir()  # half-written one removed, whole one kept


def test_safetensors_and_quota_errors_are_a_full_disk_too(tmp_path: Path) -> None:
    from safetensors import SafetensorError

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DiskFullError, match=r"the disk is full where .* \(the model needs about 1.5 KB, .* free\).*"
                       r"it trains again from the start"):
        with disk_full_is_a_user_error(out, "the model", 1500, final_step=9):
            _raise(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    with pytest.raises(DiskFullError, match="your disk quota is used up where"):
        with disk_full_is_a_user_error(out):
            _raise(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))


def test_other_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(OSError) as err:
        with disk_full_is_a_user_error(tmp_path, "a checkpoint", 10**12):
            _raise(OSError(errno.EACCES, "Permission denied"))
    assert err.value.errno == errno.EACCES
    with pytest.raises(RuntimeError, match="shape mismatch"):  # not a write, though the disk "lacks" 1 TB
        with disk_full_is_a_user_error(tmp_path, "a checkpoint", 10**12):
            _raise(RuntimeError("shape mismatch"))


def test_what_a_rerun_does(tmp_path: Path) -> None:
    assert "trains again from the start" in what_a_rerun_does(tmp_path, 9)
    _fake_checkpoint(tmp_path, 3)
    assert what_a_rerun_does(tmp_path, 9) == f"it resumes from {tmp_path / 'checkpoint-3'}"
    _fake_checkpoint(tmp_path, 9)
    assert "where training ended, and only redoes what comes after training" in what_a_rerun_does(tmp_path, 9)


def test_real_full_disk_errors_are_recognised(small_disk: Path) -> None:
    """What safetensors and torch.save really raise on a full file system (torch's zip
    writer says nothing of the errno)."""
    from safetensors.torch import save_file

    out = small_disk / "out"
    out.mkdir()
    leave_free(small_disk, 64 * 1024)
    tensors = {"w": torch.zeros(100_000)}  # 400 KB
    with pytest.raises(DiskFullError, match=r"the model needs about 400.0 KB, .* free\)"):
        with disk_full_is_a_user_error(out, "the model", 400_000):
            save_file(tensors, out / "model.safetensors")
    ckpt = out / "checkpoint-1"
    ckpt.mkdir()
    with pytest.raises(DiskFullError, match=r"a checkpoint needs about 1.2 MB"):
        with disk_full_is_a_user_error(out, "a checkpoint", 1_200_000):
            torch.save(tensors, ckpt / "optimizer.pt")
    assert not ckpt.exists()  # the cut-off checkpoint is gone, its space given back
