"""files.py's writes through a new temporary file: no planted link is written through, the umask's mode, nothing left behind; follow_umask touches only what it is given."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from finetune.utils import files

pytestmark = pytest.mark.skipif(os.name != "posix", reason="symbolic links and permission bits are POSIX")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_no_write_follows_a_link_planted_at_the_temporary_or_the_final_name(tmp_path: Path) -> None:
    folder, outside = tmp_path / "run", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    targets = {}
    for name in ("recipe.json", "recipe.json.tmp", "README.md", "README.md.tmp", "eval_results.json.tmp"):
        targets[name] = outside / f"{name}.target"
        targets[name].write_text("keep me")
        (folder / name).symlink_to(targets[name])
    files.write_json(folder / "recipe.json", {"a": 1})
    files.write_text(folder / "README.md", "the card\n")
    files.save_metrics(folder, "eval", {"eval_accuracy": 0.5})
    assert all(t.read_text() == "keep me" for t in targets.values())
    # The links at the final names were replaced by the files themselves.
    assert not (folder / "recipe.json").is_symlink() and json.loads((folder / "recipe.json").read_text()) == {"a": 1}
    assert (folder / "README.md").read_text() == "the card\n" and not (folder / "README.md").is_symlink()
    # The links at the old fixed names are still links, never written through.
    assert (folder / "recipe.json.tmp").is_symlink() and (folder / "eval_results.json.tmp").is_symlink()


def test_a_link_at_all_results_is_not_merged_into_the_metrics(tmp_path: Path) -> None:
    """Its keys would be published: a link there is not the run's file."""
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"password": "x"}))
    (tmp_path / "all_results.json").symlink_to(secret)
    files.save_metrics(tmp_path, "train", {"train_loss": 0.5})
    assert json.loads((tmp_path / "all_results.json").read_text()) == {"train_loss": 0.5}
    assert json.loads(secret.read_text()) == {"password": "x"}


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_umasks_mode_not_mkstemps(umask, tmp_path: Path, mask: int, expected: int) -> None:
    umask(mask)
    files.write_json(tmp_path / "a.json", [1])
    with files.replacing(tmp_path / "b.png") as f:
        f.write(b"png")
    assert _mode(tmp_path / "a.json") == expected and _mode(tmp_path / "b.png") == expected


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "eval_report.json"
    files.write_json(path, {"old": True})
    with pytest.raises(RuntimeError):
        with files.replacing(path) as f:
            f.write(b"half")
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_report.json"]


def test_temporary_names_are_new_each_time_and_recognised(tmp_path: Path) -> None:
    seen = []
    for _ in range(3):
        with files.replacing(tmp_path / "x.json"):
            seen += [p.name for p in tmp_path.iterdir() if p.name != "x.json"]
    assert len(set(seen)) == 3 and all(files.is_temporary(name) for name in seen)
    assert not files.is_temporary("x.json.tmp") and not files.is_temporary("notes.tmp")


def test_follow_umask_changes_only_the_files_it_is_given(umask, tmp_path: Path) -> None:
    """A run passes what it wrote; a user's weights beside them keep their mode."""
    ours, theirs = tmp_path / "model.safetensors", tmp_path / "mine.safetensors"
    for path in (ours, theirs):
        save_file({"w": torch.zeros(2)}, path)  # safetensors writes 0600
    files.follow_umask(ours)
    assert _mode(ours) == 0o644 and _mode(theirs) == 0o600
    link = tmp_path / "link.safetensors"
    link.symlink_to(theirs)
    files.follow_umask(link)  # a link is not followed
    assert _mode(theirs) == 0o600
