"""run_files.py and the folder rules built on it: the manifest, what is the run's, what --overwrite removes, and what it refuses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from finetune.recipe import recipe_from_dict
from finetune.training import run_files
from finetune.training.output_dir import LOCK_NAME, OutputDirError, check_output_dir, claim_output_dir


def _recipe(out: Path, **training):
    return recipe_from_dict(
        {
            "description": "test recipe",
            "model": {"name_or_path": "unused/model"},
            "data": {"dataset": "unused/data"},
            "training": {"num_train_epochs": 1, "use_cpu": True, **training},
            "output_dir": str(out),
        }
    )


def _checkpoint(out: Path, step: int) -> Path:
    from safetensors.torch import save_file

    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, path / "model.safetensors")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def _tree(folder: Path) -> dict[str, bytes | str]:
    return {
        p.relative_to(folder).as_posix(): (f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes() if p.is_file() else "dir")
        for p in sorted(folder.rglob("*"))
    }


def _a_run(out: Path, manifest: bool = True) -> None:
    """A finished run's folder as a run of this recipe leaves it (``manifest``: False, as an
    earlier version left it)."""
    out.mkdir(parents=True, exist_ok=True)
    names = ["recipe.json", "model.safetensors", "config.json", "all_results.json", "README.md", "eval-other-test"]
    if manifest:
        run_files.record(out, *names, "checkpoint-2")
    (out / "recipe.json").write_text(json.dumps(_recipe(out).to_dict()))
    for name in ("model.safetensors", "config.json", "README.md"):
        (out / name).write_text(name)
    (out / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.5, "other_accuracy": 0.25}))
    (out / "eval-other-test").mkdir()
    (out / "eval-other-test" / "eval_report.json").write_text("{}")
    _checkpoint(out, 2)


# ------------------------------------------------------------------ the manifest


def test_entries_are_added_once_and_a_cut_off_line_is_skipped(tmp_path: Path) -> None:
    run_files.record(tmp_path, "recipe.json", tmp_path / "checkpoint-5", "eval-x/eval_report.json")
    run_files.record(tmp_path, "recipe.json")
    lines = (tmp_path / run_files.MANIFEST).read_text().splitlines()
    assert len(lines) == 4  # the header and three entries, each once
    with open(tmp_path / run_files.MANIFEST, "a") as f:
        f.write('{"path": "half')  # a kill mid-append
    assert run_files.recorded(tmp_path) == {"recipe.json", "checkpoint-5", "eval-x/eval_report.json"}


def test_paths_outside_the_folder_are_never_entries(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        run_files.record(tmp_path, "../elsewhere")
    with pytest.raises(ValueError):
        run_files.record(tmp_path, tmp_path.parent / "x")
    (tmp_path / run_files.MANIFEST).write_text('{"path": "../../home"}\n{"path": "/etc"}\n{"path": "ok"}\n')
    assert run_files.recorded(tmp_path) == {"ok"}


def test_a_reader_does_not_start_a_manifest_in_an_earlier_versions_run(tmp_path: Path) -> None:
    run_files.record(tmp_path, "eval-x", create=False)
    assert not (tmp_path / run_files.MANIFEST).exists()


def test_writing_records_before_and_what_appeared_during(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with run_files.writing(tmp_path, "model.safetensors") as written:
            assert run_files.recorded(tmp_path) == {"model.safetensors"}  # before anything is written
            (tmp_path / "model-00001-of-00002.safetensors").write_text("shard")
            raise RuntimeError("the save failed half-way")
    assert run_files.recorded(tmp_path) == {"model.safetensors", "model-00001-of-00002.safetensors"}
    assert written == ["model.safetensors", "model-00001-of-00002.safetensors"]


# ------------------------------------------------------------------ what is whose


def test_survey_sorts_own_foreign_and_links(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _a_run(out)
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    run_files.record(out, "mine/eval_report.json")  # a report written into a folder of the user's
    (out / "mine" / "eval_report.json").write_text("{}")
    (out / "mine" / "thesis.tex").write_text("mine")
    (out / "config.json").unlink()
    (out / "config.json").symlink_to(tmp_path / "elsewhere")
    (out / ".README.md.abcd1234.tmp").write_text("a write a kill cut off")
    found = run_files.survey(out)
    assert found.manifest and found.links == ["config.json"]
    assert set(found.foreign) == {"notes.txt", "mine/thesis.tex"}
    assert set(found.own) == {
        ".README.md.abcd1234.tmp", "README.md", "all_results.json", "checkpoint-2", "config.json",
        "eval-other-test", "mine/eval_report.json", "model.safetensors", "recipe.json",
    }


def test_without_a_manifest_only_a_run_has_own_files(tmp_path: Path) -> None:
    old = tmp_path / "old"
    _a_run(old, manifest=False)
    (old / "all_results.json.tmp").write_text("an earlier version's leftover")
    (old / "runs" / "May01").mkdir(parents=True)
    (old / "runs" / "May01" / "events.out.tfevents.1.host").write_text("")
    (old / "onnx").mkdir()
    (old / "onnx" / "export_report.json").write_text("{}")
    (old / "eval-mine").mkdir()
    (old / "eval-mine" / "thesis.tex").write_text("mine")
    (old / "checkpoint-keep").mkdir()
    found = run_files.survey(old)
    assert not found.manifest and set(found.foreign) == {"eval-mine", "checkpoint-keep"}
    assert {"all_results.json.tmp", "runs", "onnx", "eval-other-test", "checkpoint-2"} <= set(found.own)
    (old / "recipe.json").unlink()  # not a run: everything is the user's
    assert run_files.survey(old).own == []


def test_remove_never_follows_a_link(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (out / "checkpoint-1").symlink_to(outside)
    (out / "dir").symlink_to(outside)
    assert run_files.remove(out, ["checkpoint-1", "dir/keep.txt"]) == []
    assert not os.path.lexists(out / "checkpoint-1") and (outside / "keep.txt").read_text() == "keep"


# ------------------------------------------------------------------ the folder rules


def test_the_issues_folder_is_refused_with_overwrite_and_kept_whole(tmp_path: Path) -> None:
    """The user's README.md and checkpoint-keep/x.txt: refused, without suggesting the flag
    that would have removed them, and nothing written into the folder."""
    mine = tmp_path / "mine"
    (mine / "checkpoint-keep").mkdir(parents=True)
    (mine / "README.md").write_text("my notes")
    (mine / "checkpoint-keep" / "x.txt").write_text("x")
    before = _tree(mine)
    for overwrite in (True, False):
        with pytest.raises(OutputDirError) as err:
            claim_output_dir(_recipe(mine), overwrite=overwrite)
        message = str(err.value)
        assert "\n" not in message and "did not make (README.md, checkpoint-keep)" in message
        assert "--overwrite" not in message and "move them out of the folder" in message
        assert _tree(mine) == before


def test_overwrite_removes_exactly_the_old_runs_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _a_run(out)
    (out / ".finetune.lock.json").write_text("{}")  # a dead run's holder file
    lock, resume = claim_output_dir(_recipe(out, learning_rate=0.5), overwrite=True)
    try:
        assert resume is None
        assert {p.name for p in out.iterdir()} <= {LOCK_NAME, ".finetune.lock.json", run_files.MANIFEST}
        assert run_files.recorded(out) == set()
    finally:
        lock.release()


def test_overwrite_of_an_earlier_versions_run_removes_its_known_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _a_run(out, manifest=False)
    (out / "recipe.json.tmp").write_text("{")
    lock, _ = claim_output_dir(_recipe(out, learning_rate=0.5), overwrite=True)
    lock.release()
    assert {p.name for p in out.iterdir()} <= {LOCK_NAME, run_files.MANIFEST}


def test_a_run_with_files_of_the_users_is_refused_by_overwrite_and_resumes_beside_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _a_run(out)
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    with pytest.raises(OutputDirError, match=r"did not make \(notes.txt\) beside a finetune run") as err:
        check_output_dir(_recipe(out, learning_rate=0.5), overwrite=True)
    assert "--overwrite" not in str(err.value)
    with pytest.raises(OutputDirError, match=r"different recipe .* move the files finetune did not make \(notes.txt\)"):
        check_output_dir(_recipe(out, learning_rate=0.5), overwrite=False)
    assert check_output_dir(_recipe(out), overwrite=False) == str(out / "checkpoint-2")  # the same recipe resumes
    assert _tree(out) == before


def test_a_rerun_stops_at_a_users_file_or_a_link_where_it_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _a_run(out)
    (out / "trainer_state.json").write_text("mine")  # not in the manifest
    with pytest.raises(OutputDirError, match=r"holds trainer_state.json where the run writes"):
        check_output_dir(_recipe(out), overwrite=False)
    (out / "trainer_state.json").unlink()
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputDirError, match=r"holds README.md where the run writes"):
        check_output_dir(_recipe(out), overwrite=False)


def test_an_earlier_versions_run_gets_a_manifest_when_claimed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _a_run(out, manifest=False)
    lock, resume = claim_output_dir(_recipe(out), overwrite=False)
    lock.release()
    assert resume == str(out / "checkpoint-2")
    assert run_files.recorded(out) == {
        "README.md", "all_results.json", "checkpoint-2", "config.json", "eval-other-test", "model.safetensors",
        "recipe.json",
    }


# ------------------------------------------------------------------ finetune inspect's report


def _report(out: Path, record: bool = True) -> None:
    """``inspect/`` as finetune inspect leaves it (``record``: listed in the manifest first)."""
    out.mkdir(parents=True, exist_ok=True)
    if record:
        run_files.record(out, "inspect")
    (out / "inspect").mkdir()
    for name in ("report.md", "summary.json", "label_issues.csv", "label_issues_train.png"):
        (out / "inspect" / name).write_text(name)


def test_the_report_is_finetunes_and_a_users_file_in_it_stays_the_users(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _a_run(out)
    _report(out)
    assert "inspect" in run_files.survey(out).own and not run_files.survey(out).foreign
    (out / "inspect" / "reviewed.csv").write_text("mine")
    (out / "inspect" / ".report.md.abcd1234.tmp").write_text("a write a kill cut off")
    found = run_files.survey(out)
    assert found.foreign == ["inspect/reviewed.csv"]
    assert {p for p in found.own if p.startswith("inspect")} == {
        "inspect/.report.md.abcd1234.tmp", "inspect/label_issues.csv", "inspect/label_issues_train.png",
        "inspect/report.md", "inspect/summary.json",
    }
    before = _tree(out)
    with pytest.raises(OutputDirError, match=r"did not make \(inspect/reviewed.csv\) beside a finetune run"):
        claim_output_dir(_recipe(out, learning_rate=0.5), overwrite=True)
    assert _tree(out) == before
    assert check_output_dir(_recipe(out), overwrite=False) == str(out / "checkpoint-2")  # the same recipe goes on
    (out / "inspect" / "reviewed.csv").unlink()
    lock, _ = claim_output_dir(_recipe(out, learning_rate=0.5), overwrite=True)
    lock.release()
    assert not (out / "inspect").exists() and run_files.recorded(out) == set()


def test_a_folder_with_only_the_report_starts_afresh_and_keeps_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _report(out)
    assert check_output_dir(_recipe(out), overwrite=False) is None
    lock, resume = claim_output_dir(_recipe(out), overwrite=False)
    lock.release()
    assert resume is None and (out / "inspect" / "summary.json").is_file()
    run_files.record(out, "recipe.json", "checkpoint-2")  # the run goes on writing into the same manifest
    (out / "recipe.json").write_text(json.dumps(_recipe(out).to_dict()))
    _checkpoint(out, 2)
    assert run_files.recorded(out) == {"inspect", "recipe.json", "checkpoint-2"}
    assert check_output_dir(_recipe(out), overwrite=False) == str(out / "checkpoint-2")
    lock, _ = claim_output_dir(_recipe(out, learning_rate=0.5), overwrite=True)
    lock.release()
    assert {p.name for p in out.iterdir()} <= {LOCK_NAME, run_files.MANIFEST}


def test_a_users_file_in_the_report_of_a_folder_without_a_run(tmp_path: Path) -> None:
    """A fresh run keeps it beside the report; --overwrite refuses rather than remove anything."""
    out = tmp_path / "out"
    _report(out)
    (out / "inspect" / "reviewed.csv").write_text("mine")
    assert check_output_dir(_recipe(out), overwrite=False) is None
    before = _tree(out)
    with pytest.raises(OutputDirError, match=r"did not make \(inspect/reviewed.csv\)"):
        claim_output_dir(_recipe(out), overwrite=True)
    assert _tree(out) == before


def test_an_inspect_folder_finetune_did_not_make_is_the_users(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _a_run(out)
    _report(out, record=False)  # not in the manifest: the user's, whatever is in it
    assert "inspect" in run_files.survey(out).foreign
    old = tmp_path / "old"
    _a_run(old, manifest=False)
    _report(old, record=False)  # a run without a manifest: the report's names make it finetune's
    assert "inspect" in run_files.survey(old).own
    (old / "inspect" / "reviewed.csv").write_text("mine")
    assert "inspect" in run_files.survey(old).foreign
