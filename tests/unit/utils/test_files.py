"""files.py: file modes of written weights follow the umask; metrics files are never left half-written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from finetune.utils import files as util

pytestmark = pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_the_process_umask(umask) -> None:
    for mask in (0o022, 0o027, 0o002, 0o077):
        umask(mask)
        assert util.current_umask() == mask
        assert util.current_umask() == mask  # reading it does not change it


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_safetensors_files_get_the_mode_of_any_new_file(umask, tmp_path: Path, mask: int, expected: int) -> None:
    umask(mask)
    (tmp_path / "checkpoint-3").mkdir()
    weights = [tmp_path / "model.safetensors", tmp_path / "checkpoint-3" / "model.safetensors"]
    for path in weights:
        save_file({"w": torch.zeros(2)}, path)
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    os.chmod(other, 0o600)  # not a safetensors file: not ours to widen
    util.follow_umask(tmp_path)
    assert [_mode(p) for p in weights] == [expected, expected]
    assert _mode(other) == 0o600


def test_safetensors_writes_private_files(umask, tmp_path: Path) -> None:
    """Why follow_umask exists: if safetensors ever writes files with the umask's mode itself,
    this fails, and the helper and its calls can go."""
    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    import safetensors

    assert _mode(tmp_path / "model.safetensors") == 0o600, (
        f"safetensors {safetensors.__version__} now writes files with the umask's mode; util.follow_umask "
        "and its calls in train.py can go"
    )


def test_save_metrics_merges_into_all_results_like_the_trainer(tmp_path: Path) -> None:
    util.save_metrics(tmp_path, "train", {"train_loss": 0.5, "epoch": 3.0})
    util.save_metrics(tmp_path, "eval", {"eval_accuracy": 0.9, "epoch": 3.0})
    assert json.loads((tmp_path / "train_results.json").read_text()) == {"epoch": 3.0, "train_loss": 0.5}
    assert json.loads((tmp_path / "eval_results.json").read_text()) == {"epoch": 3.0, "eval_accuracy": 0.9}
    assert json.loads((tmp_path / "all_results.json").read_text()) == {"epoch": 3.0, "eval_accuracy": 0.9, "train_loss": 0.5}


def test_save_metrics_starts_afresh_over_an_empty_all_results(tmp_path: Path) -> None:
    """What a signal during the Trainer's own save_metrics left behind: the rerun that
    finishes the run must not fail reading it."""
    (tmp_path / "all_results.json").write_text("")
    util.save_metrics(tmp_path, "train", {"train_loss": 0.5})
    assert json.loads((tmp_path / "all_results.json").read_text()) == {"train_loss": 0.5}


def test_save_metrics_interrupted_mid_write_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    util.save_metrics(tmp_path, "train", {"train_loss": 0.5})
    before = (tmp_path / "all_results.json").read_text()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # a signal handler raising in the middle of the write

    monkeypatch.setattr(util.os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        util.save_metrics(tmp_path, "eval", {"eval_accuracy": 0.9})
    assert (tmp_path / "all_results.json").read_text() == before
    assert not (tmp_path / "eval_results.json").exists()
