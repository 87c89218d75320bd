"""--overwrite and reruns through the command line: a folder of the user's is never touched, an older run of another recipe goes whole, no write follows a planted link, no mode of a file the run did not write changes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from finetune.training import run_files
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.images import make_image_folder

pytestmark = pytest.mark.skipif(os.name != "posix", reason="symbolic links and permission bits are POSIX")


def _tree(folder: Path) -> dict[str, str | bytes]:
    return {
        p.relative_to(folder).as_posix(): (f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes() if p.is_file() else "dir")
        for p in sorted(folder.rglob("*"))
    }


def _error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("finetune: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def test_overwrite_on_a_folder_of_the_users_is_refused_and_touches_nothing(tmp_path: Path, tiny_vit: Path) -> None:
    """The issue's case: the user's README.md and checkpoint-keep/x.txt survive --overwrite."""
    images = make_image_folder(tmp_path / "images", per_class=4)
    mine = tmp_path / "mine"
    (mine / "checkpoint-keep").mkdir(parents=True)
    (mine / "README.md").write_text("my notes")
    (mine / "checkpoint-keep" / "x.txt").write_text("x")
    before = _tree(mine)
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, mine, training__num_train_epochs=1)
    line = _error(run_cli("--recipe", str(recipe), "--overwrite"))
    assert "did not make (README.md, checkpoint-keep)" in line and "--overwrite" not in line
    assert _tree(mine) == before


def test_overwrite_replaces_an_older_run_of_another_recipe_whole(tmp_path: Path, tiny_vit: Path) -> None:
    """Everything of the old run goes (its eval set's folder and keys, a `finetune eval` report,
    an export), nothing outside the folder changes, and all_results.json holds the new run's keys
    alone; then the same for a run written before the manifest."""
    images = make_image_folder(tmp_path / "images", per_class=4)
    other = make_image_folder(tmp_path / "other", per_class=2, splits=("test",))
    out = tmp_path / "out"
    old = write_recipe(
        tmp_path / "old.json", tiny_vit, images, out, training__num_train_epochs=1,
        data__eval_sets={"other": {"dataset": str(other), "split": "test"}},
    )
    assert run_cli("--recipe", str(old)).returncode == 0
    report = run_cli("eval", str(out), "--data", str(other), "--split", "test")
    assert report.returncode == 0, report.stderr[-2000:]
    assert (out / "eval-other").is_dir() and (out / "eval-other-test").is_dir()
    assert "other_accuracy" in json.loads((out / "all_results.json").read_text())
    (tmp_path / "beside.txt").write_text("the user's, beside the run")
    outside = {p: _tree(p) for p in (images, other)} | {"beside": (tmp_path / "beside.txt").read_bytes()}

    new = write_recipe(tmp_path / "new.json", tiny_vit, images, out, training__num_train_epochs=1, training__learning_rate=0.02)
    result = run_cli("--recipe", str(new), "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    assert "eval-other" not in names and "eval-other-test" not in names
    assert not any("other" in key for key in json.loads((out / "all_results.json").read_text()))
    assert json.loads((out / "recipe.json").read_text())["training"]["learning_rate"] == 0.02
    assert {p: _tree(p) for p in (images, other)} | {"beside": (tmp_path / "beside.txt").read_bytes()} == outside
    assert all(p.name in run_files.CONTROL_FILES or p.name in run_files.recorded(out) for p in out.iterdir())

    # As an earlier version left a run: no manifest, an export and a leftover temporary file.
    (out / run_files.MANIFEST).unlink()
    (out / "onnx").mkdir()
    (out / "onnx" / "export_report.json").write_text("{}")
    (out / "all_results.json.tmp").write_text("{")
    again = run_cli("--recipe", str(old), "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not (out / "onnx").exists() and not (out / "all_results.json.tmp").exists()
    assert json.loads((out / "recipe.json").read_text())["training"]["learning_rate"] == 0.01


def test_no_write_follows_links_planted_in_a_finished_run(tmp_path: Path, tiny_vit: Path) -> None:
    """Links at the names earlier versions wrote through (NAME.tmp) and at the final names,
    pointing outside: the same command with --overwrite writes none of the files outside; the
    same command without it stops at the links."""
    images = make_image_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, out, training__num_train_epochs=1)
    assert run_cli("--recipe", str(recipe)).returncode == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = [
        "recipe.json.tmp", "data_report.json.tmp", "all_results.json.tmp", "eval_results.json.tmp",
        "train_results.json.tmp", "eval_report.json.tmp", "confusion_matrix.png.tmp", ".finetune.lock.json.tmp",
        "README.md", "all_results.json", "trainer_state.json", "config.json", "eval_report.json",
    ]
    for name in planted:
        (outside / name).write_text(f"the user's {name}")
        (out / name).unlink(missing_ok=True)
        (out / name).symlink_to(outside / name)
    before = _tree(outside)

    line = _error(run_cli("--recipe", str(recipe)))
    assert "where the run writes" in line and "README.md" in line
    result = run_cli("--recipe", str(recipe), "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _tree(outside) == before
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert json.loads((out / "eval_results.json").read_text())["eval_num_images"] > 0


def test_a_rerun_changes_no_mode_of_a_file_it_did_not_write(tmp_path: Path, tiny_vit: Path) -> None:
    images = make_image_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.json", tiny_vit, images, out, training__num_train_epochs=1)
    assert run_cli("--recipe", str(recipe)).returncode == 0
    mine = out / "mine.safetensors"
    mine.write_bytes((out / "model.safetensors").read_bytes())
    os.chmod(mine, 0o600)
    result = run_cli("--recipe", str(recipe))  # the same recipe: finishes again, beside the user's file
    assert result.returncode == 0, result.stderr[-2000:]
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_every_file_a_run_makes_is_in_its_manifest(tmp_path: Path, tiny_resnet: Path) -> None:
    """LP-FT's head, TensorBoard's folder, an extra evaluation set's report, the checkpoints and
    the final save's files: all listed, so --overwrite can remove them and nothing else."""
    images = make_image_folder(tmp_path / "images", per_class=4)
    other = make_image_folder(tmp_path / "other", per_class=2, splits=("test",))
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.json", tiny_resnet, images, out,
        model={"name_or_path": str(tiny_resnet), "strategy": "lp_ft"},
        data__eval_sets={"other": {"dataset": str(other), "split": "test"}},
        training__num_train_epochs=1, training__report_to=["tensorboard"],
    )
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    listed = run_files.recorded(out)
    present = {p.name for p in out.iterdir()} - run_files.CONTROL_FILES
    assert {"lp_head.safetensors", "runs", "eval-other", "model.safetensors", "calibration.json", "reliability.png"} <= present
    assert (out / "eval-other" / "reliability.png").is_file()  # inside a folder that is listed whole
    assert any(name.startswith("checkpoint-") for name in present)
    assert present <= listed, f"not in the manifest: {sorted(present - listed)}"
