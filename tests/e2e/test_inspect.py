"""`finetune inspect` end to end: on a generated set with known flipped labels and planted
duplicates it finds them; the command writes its report and leaves a run's files alone;
every option does what it says; bad input is one line and exit 2; and training's
``data.leaked_eval: "drop"`` drops exactly the leaked eval images."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.training import run_files
from tests.helpers import ROOT
from tests.helpers.cli import run_cli

CLASSES = ["red", "green", "blue"]


def picture(label: int, rng: np.random.Generator, size: int = 24) -> Image.Image:
    """A smooth random picture (blobs, like a photo's structure) tinted by its class's colour."""
    small = rng.integers(0, 110, (4, 4, 3)).astype(np.float64)
    small[..., label] += 140
    return Image.fromarray(small.clip(0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def generated_set(root: Path, per_class: int = 30, test_per_class: int = 10, seed: int = 0) -> dict[str, set[str]]:
    """An image folder (train/, test/) of three colour classes, with 6 training images saved
    under a wrong class and 6 test images that copy training images (2 the same file, 2 saved
    again as JPEG, 2 resized and saved as JPEG). Returns the file names of the flipped and the
    planted ones."""
    rng = np.random.default_rng(seed)
    flipped, planted, originals = set(), set(), []
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            image = picture(c, rng)
            given = name
            if i < 2:  # two of each class under the next class's name
                given = CLASSES[(c + 1) % 3]
                flipped.add(f"{name}_{i}.png")
            folder = root / "train" / given
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{name}_{i}.png")
            if i in (5, 6):
                originals.append((name, image))
        folder = root / "test" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(test_per_class):
            picture(c, rng).save(folder / f"test_{name}_{i}.png")
    for k, (name, image) in enumerate(originals):
        copy = [image, image, jpeg(image), jpeg(image), jpeg(image.resize((22, 22), Image.Resampling.BILINEAR)),
                jpeg(image.resize((22, 22), Image.Resampling.BILINEAR))][k]
        copy.save(root / "test" / name / f"copy_{k}.png")
        planted.add(f"copy_{k}.png")
    return {"flipped": flipped, "planted": planted}


def colour_features(datasets) -> list[torch.Tensor]:
    """A fixed feature extractor in place of the backbone: each image's mean colour (what its
    class is) and 13 numbers of noise drawn from its pixels' hash (what makes it itself)."""
    from finetune import data

    out = []
    for dataset in datasets:
        rows = data.FastRows(dataset)
        pixels = rows.__getitems__(list(range(len(rows)))).collated["pixel_values"].float()
        colour = pixels.mean(dim=(2, 3)) / 255 * 6
        noise = []
        for image in pixels.to(torch.uint8).numpy():
            seed = int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "little")
            noise.append(torch.from_numpy(np.random.default_rng(seed).normal(0, 1, 13)).float())
        out.append(torch.cat([colour, torch.stack(noise)], dim=1))
    return out


@pytest.fixture
def fixed_features(monkeypatch):
    """The backbone's pass replaced by :func:`colour_features`; records what it was asked."""
    from finetune.inspection import run as inspect_run
    from finetune.probe.backbone import BackboneFeatures

    calls: list[dict] = []

    def fake(model_cfg, class_names, processor, datasets, *, mirror, batch_size=64, device=None, args=None):
        calls.append({"mirror": mirror, "batch_size": batch_size, "images": sum(len(d) for d in datasets)})
        return BackboneFeatures(colour_features(datasets), "test: mean colour", 0.0, sum(len(d) for d in datasets), mirror)

    monkeypatch.setattr(inspect_run, "backbone_features", fake)
    return calls


def recipe_file(tmp_path: Path, model: Path | str, dataset: Path, out: Path, **data) -> Path:
    recipe = {
        "description": "generated colour classes",
        "model": {"name_or_path": str(model), "strategy": "linear_probe"},
        "data": {"dataset": str(dataset), "augment": {"hflip": False}, **data},
        "training": {"seed": 0, "use_cpu": True, "disable_tqdm": True},
        "output_dir": str(out),
    }
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def inspect(recipe: Path | str, *options: str) -> int:
    """The command, in this process (so the fixed features apply)."""
    from finetune.cli import inspect as command
    from finetune.cli.main import build_parser

    args = build_parser().parse_args(["inspect", str(recipe), *options])
    return command.run(args)


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_it_finds_the_flipped_labels_and_the_planted_duplicates(tmp_path, tiny_vit, fixed_features, capsys) -> None:
    truth = generated_set(tmp_path / "images")
    out = tmp_path / "run"
    assert inspect(recipe_file(tmp_path, tiny_vit, tmp_path / "images", out)) == 0
    report = out / "inspect"
    issues = [r for r in read_csv(report / "label_issues.csv") if r["part"] == "train"]
    flagged = {Path(r["source"]).name for r in issues}
    found = flagged & truth["flipped"]
    assert len(found) >= 5, (flagged, truth["flipped"])  # recall >= 5 of 6
    assert len(flagged - truth["flipped"]) <= 0.1 * (90 - 6)  # clean images are not flagged wholesale
    # Ranked first: the top six are flips.
    assert len({Path(r["source"]).name for r in issues[:6]} & truth["flipped"]) >= 5
    assert all(r["given_label"] != r["suggested_label"] for r in issues)
    pairs = read_csv(report / "duplicates.csv")
    leaked = {Path(r["source_b"]).name: r for r in pairs if r["where"] == "train → test"}
    assert set(leaked) >= truth["planted"], (set(leaked), truth["planted"])
    assert len(set(leaked) - truth["planted"]) <= 1  # distinct test images do not leak
    assert {leaked[f"copy_{k}.png"]["kind"] for k in (0, 1)} == {"exact"}
    assert {leaked[f"copy_{k}.png"]["view"] for k in (2, 3, 4, 5)} == {"pixels"}
    summary = json.loads((report / "summary.json").read_text())
    test = next(p for p in summary["parts"] if p["name"] == "test")
    assert test["leaked_from_training"]["images"] == len(leaked) and test["leaked_from_training"]["exact"] == 2
    assert summary["settings"]["folds"] == 5 and summary["settings"]["threshold"] == 0.95
    for name in ("report.md", "label_issues_train.png", "label_issues_test.png", "duplicates.png", "outliers.png",
                 "class_balance.png", "similarity.png", "outliers.csv", "class_balance.csv"):
        assert (report / name).stat().st_size > 0, name
    text = (report / "report.md").read_text()
    assert "## Likely label errors" in text and "train → test" in text
    printed = capsys.readouterr().out
    assert "duplicate training images (2 exact)" in printed and str(report / "report.md") in printed
    # Only the report, the lock and the manifest naming the report were written in the output folder.
    assert sorted(p.name for p in out.iterdir()) == [".finetune-manifest.jsonl", ".finetune.lock", "inspect"]
    assert run_files.recorded(out) == {"inspect"}
    assert not [p for p in report.iterdir() if p.name.endswith(".tmp")]


def test_every_option_is_used(tmp_path, tiny_vit, fixed_features) -> None:
    generated_set(tmp_path / "images")
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, tiny_vit, tmp_path / "images", out)
    summary = lambda: json.loads((out / "inspect" / "summary.json").read_text())  # noqa: E731

    assert inspect(recipe, "--folds", "3", "--top", "2", "--seed", "7", "--batch-size", "16", "--no-mirror") == 0
    s = summary()
    assert (s["settings"]["folds"], s["settings"]["top"], s["settings"]["seed"], s["settings"]["batch_size"]) == (3, 2, 7, 16)
    assert fixed_features[-1]["mirror"] is False and fixed_features[-1]["batch_size"] == 16
    text = (out / "inspect" / "report.md").read_text()
    table = text.split("### train")[1].split("All ")[0]
    assert s["parts"][0]["label_issues"]["flagged"] > 2
    assert table.count("\n| ") - 1 == 2  # --top rows under the header
    first = read_csv(out / "inspect" / "label_issues.csv")

    # --seed changes the folds, so (with these few images) the probabilities.
    assert inspect(recipe, "--folds", "3", "--seed", "8") == 0
    assert summary()["settings"]["seed"] == 8
    assert fixed_features[-1]["mirror"] is False  # the recipe's data.augment.hflip false
    second = read_csv(out / "inspect" / "label_issues.csv")
    assert [r["p_given"] for r in first] != [r["p_given"] for r in second]

    assert inspect(recipe, "--mirror", "--split", "train") == 0
    s = summary()
    assert fixed_features[-1]["mirror"] is True and s["settings"]["mirror"] is True
    assert [("label_issues" in p) for p in s["parts"]] == [True, False]
    assert not (out / "inspect" / "label_issues_test.png").exists()  # the earlier report's, removed
    assert {r["part"] for r in read_csv(out / "inspect" / "label_issues.csv")} == {"train"}

    assert inspect(recipe, "--split", "eval") == 0
    assert [("label_issues" in p) for p in summary()["parts"]] == [False, True]

    # --threshold 1: only copies with equal pixels (or identical views) are duplicates.
    assert inspect(recipe, "--threshold", "1") == 0
    test = next(p for p in summary()["parts"] if p["name"] == "test")
    assert test["leaked_from_training"] == {**test["leaked_from_training"], "images": 2, "exact": 2, "near": 0}
    # The recipe key is the default; the option overrides it.
    assert inspect(recipe, "--set", "data.duplicate_threshold=1.0") == 0
    assert summary()["settings"]["threshold"] == 1.0


def test_eval_sets_and_a_reported_validation_piece_are_inspected_too(tmp_path, tiny_vit, fixed_features) -> None:
    truth = generated_set(tmp_path / "images")
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, tiny_vit, tmp_path / "images", out)
    sets = json.dumps({"again": {"dataset": str(tmp_path / "images"), "split": "test"}})
    assert inspect(recipe, "--set", f"data.eval_sets={sets}") == 0
    summary = json.loads((out / "inspect" / "summary.json").read_text())
    assert [p["name"] for p in summary["parts"]] == ["train", "test", "eval set again"]
    test, again = summary["parts"][1], summary["parts"][2]
    assert again["leaked_from_training"] == test["leaked_from_training"]  # the same images, the same verdict
    assert "label_issues" in again and (out / "inspect" / "label_issues_eval-set-again.png").is_file()
    pairs = read_csv(out / "inspect" / "duplicates.csv")
    assert {Path(r["source_b"]).name for r in pairs if r["where"] == "train → eval set again"} >= truth["planted"]

    # data.eval_split null: the validation piece is what gets reported, and so the eval part.
    assert inspect(recipe, "--set", "data.eval_split=null") == 0
    summary = json.loads((out / "inspect" / "summary.json").read_text())
    assert [p["name"] for p in summary["parts"]] == ["train", "train (validation piece)"]
    assert summary["parts"][0]["images"] + summary["parts"][1]["images"] == 90


def test_a_run_folder_is_inspected_without_touching_its_files(tmp_path, tiny_vit, fixed_features) -> None:
    from finetune.recipe import load_recipe

    generated_set(tmp_path / "images")
    moved = tmp_path / "moved-run"
    recipe = recipe_file(tmp_path, tiny_vit, tmp_path / "images", tmp_path / "where-it-ran")
    moved.mkdir()
    (moved / "recipe.json").write_text(json.dumps(load_recipe(recipe).to_dict()))
    for name, content in {"model.safetensors": b"weights", "eval_results.json": b"{}", "README.md": b"card"}.items():
        (moved / name).write_bytes(content)
    before = {p.name: p.read_bytes() for p in moved.iterdir()}
    assert inspect(moved) == 0
    assert {p.name: p.read_bytes() for p in moved.iterdir() if p.is_file() and p.name != ".finetune.lock"} == before
    summary = json.loads((moved / "inspect" / "summary.json").read_text())
    assert summary["recipe"]["output_dir"] == str(moved)  # where the folder is now
    assert not (tmp_path / "where-it-ran").exists()
    # A run from before the manifest gets none: the report's names make inspect/ finetune's.
    assert not (moved / run_files.MANIFEST).exists() and "inspect" in run_files.survey(moved).own


def test_a_finished_runs_manifest_gets_the_report_and_a_rerun_replaces_it(tmp_path, tiny_vit, fixed_features) -> None:
    """The report goes into the run's manifest before it is written; a rerun replaces the
    report's files (never through a link planted in the folder) and keeps the user's."""
    from finetune.recipe import load_recipe

    generated_set(tmp_path / "images")
    run = tmp_path / "run"
    recipe = recipe_file(tmp_path, tiny_vit, tmp_path / "images", run)
    run.mkdir()
    names = {"recipe.json": json.dumps(load_recipe(recipe).to_dict()).encode(), "model.safetensors": b"weights"}
    run_files.record(run, *names)
    for name, content in names.items():
        (run / name).write_bytes(content)
    assert inspect(run) == 0
    assert run_files.recorded(run) == {"recipe.json", "model.safetensors", "inspect"}
    assert {name: (run / name).read_bytes() for name in names} == names
    report = run / "inspect"
    first = {p.name: p.stat().st_mtime_ns for p in report.iterdir()}
    outside = tmp_path / "outside.txt"
    outside.write_text("not the report's")
    (report / "reviewed.csv").write_text("mine")
    (report / "label_issues.csv.tmp").symlink_to(outside)  # an earlier version's fixed temporary name
    (report / "report.md").unlink()
    (report / "report.md").symlink_to(outside)
    assert inspect(run, "--seed", "8") == 0
    assert outside.read_text() == "not the report's"
    assert (report / "reviewed.csv").read_text() == "mine" and (report / "label_issues.csv.tmp").is_symlink()
    assert not (report / "report.md").is_symlink() and "## Likely label errors" in (report / "report.md").read_text()
    assert all((report / name).stat().st_mtime_ns > when for name, when in first.items() if name != "report.md")
    assert json.loads((report / "summary.json").read_text())["settings"]["seed"] == 8
    assert run_files.survey(run).foreign == ["inspect/label_issues.csv.tmp", "inspect/reviewed.csv"]


def test_a_user_folder_at_inspect_or_files_finetune_did_not_make_are_refused(tmp_path, tiny_vit, fixed_features) -> None:
    generated_set(tmp_path / "images", per_class=6, test_per_class=2)
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, tiny_vit, tmp_path / "images", out)
    (out / "inspect").mkdir(parents=True)
    (out / "inspect" / "summary.json").write_text("{}")  # the user's, though it looks like a report
    assert inspect(recipe) == 2
    assert [p.name for p in (out / "inspect").iterdir()] == ["summary.json"]
    assert not (out / run_files.MANIFEST).exists()
    (out / "inspect" / "summary.json").unlink()
    (out / "inspect").rmdir()
    (out / "notes.txt").write_text("mine")
    assert inspect(recipe) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # refused before the lock is taken


def test_training_may_start_in_a_folder_that_holds_only_the_report(tmp_path, tiny_vit, fixed_features) -> None:
    """A training run there starts afresh and keeps the report, which stays in the manifest: a
    rerun of the recipe goes on, and --overwrite with another recipe removes it with the run."""
    from finetune.recipe import load_recipe
    from finetune.training.output_dir import check_output_dir, claim_output_dir

    generated_set(tmp_path / "images", per_class=8, test_per_class=3)
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, tiny_vit, tmp_path / "images", out)
    assert inspect(recipe) == 0
    assert check_output_dir(load_recipe(recipe), overwrite=False) is None  # a fresh run, not "foreign files"
    report = {p.name: p.read_bytes() for p in (out / "inspect").iterdir()}
    result = run_cli("train", "--recipe", str(recipe), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in (out / "inspect").iterdir()} == report
    listed = run_files.recorded(out)
    assert {"inspect", "recipe.json", "model.safetensors"} <= listed, listed
    check_output_dir(load_recipe(recipe), overwrite=False)  # the same recipe goes on: no error
    assert inspect(out) == 0  # and the report may be written again
    other = load_recipe(recipe, ["training.seed=1"])
    lock, _ = claim_output_dir(other, overwrite=True)
    lock.release()
    assert not (out / "inspect").exists() and run_files.recorded(out) == set()


def test_a_training_run_refuses_while_inspect_holds_the_folder(tmp_path, tiny_vit, fixed_features, monkeypatch) -> None:
    from finetune.inspection import run as inspect_run
    from finetune.recipe import load_recipe
    from finetune.training.output_dir import OutputDirError, claim_output_dir

    generated_set(tmp_path / "images", per_class=6, test_per_class=2)
    recipe = recipe_file(tmp_path, tiny_vit, tmp_path / "images", tmp_path / "run")
    analyse, refused = inspect_run.analyse, []

    def meanwhile(*args, **kwargs):
        with pytest.raises(OutputDirError, match=r"is in use by another finetune run \(pid") as err:
            claim_output_dir(load_recipe(recipe), overwrite=False)
        refused.append(str(err.value))
        return analyse(*args, **kwargs)

    monkeypatch.setattr(inspect_run, "analyse", meanwhile)
    assert inspect(recipe) == 0 and len(refused) == 1


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("finetune: error:")]


def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_vit) -> None:
    from finetune.training.output_dir import OutputLock

    generated_set(tmp_path / "images", per_class=6, test_per_class=2)
    out = tmp_path / "run"
    good = recipe_file(tmp_path, tiny_vit, tmp_path / "images", out)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(good.read_text()), "data": {"dataset": "x", "duplicate_treshold": 0.9}}))
    cases = {
        "missing": ([str(tmp_path / "nowhere")], "no such recipe file or output folder"),
        "no recipe.json": ([str(tmp_path / "images")], "holds no recipe.json"),
        "bad recipe": ([str(bad)], "did you mean 'duplicate_threshold'?"),
    }
    for name, (argv, text) in cases.items():
        result = run_cli("inspect", *argv, timeout=300)
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert len(errors(result)) == 1 and text in errors(result)[0], (name, result.stderr[-2000:])
    result = run_cli("inspect", str(good), "--threshold", "1.5", timeout=300)
    assert result.returncode == 2 and "must be a cosine similarity in (0, 1]" in result.stderr

    # A run holds the folder: refused at once, the run's holder named.
    out.mkdir()
    lock = OutputLock(out).acquire()
    lock.write_holder()
    try:
        result = run_cli("inspect", str(good), timeout=300)
    finally:
        lock.release()
    assert result.returncode == 2 and "is in use by another finetune run (pid" in errors(result)[0]
    assert not (out / "inspect").exists()

    # A folder of someone else's files, or of a run of other data.
    (out / "notes.txt").write_text("mine")
    result = run_cli("inspect", str(good), timeout=300)
    assert result.returncode == 2 and "holds files that are not a finetune run (notes.txt)" in errors(result)[0]
    (out / "notes.txt").unlink()
    other = json.loads(good.read_text())
    other["data"]["dataset"] = "elsewhere"
    (out / "recipe.json").write_text(json.dumps(other))
    result = run_cli("inspect", str(good), timeout=300)
    assert result.returncode == 2 and "holds a run of other data or another backbone (data.dataset" in errors(result)[0]
    assert sorted(p.name for p in out.iterdir()) == [".finetune.lock", "recipe.json"]


def test_the_command_on_a_tiny_model_end_to_end(tmp_path, tiny_vit) -> None:
    """The real command line and the real feature pass (a tiny random ViT): exit 0, every
    file written, the summary on the terminal."""
    generated_set(tmp_path / "images", per_class=8, test_per_class=3)
    out = tmp_path / "run"
    result = run_cli("inspect", str(recipe_file(tmp_path, tiny_vit, tmp_path / "images", out)), "--folds", "3", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "inspect: 24 train, 15 test images" in result.stdout  # 9 and the 6 planted copies
    assert "report: " in result.stdout
    summary = json.loads((out / "inspect" / "summary.json").read_text())
    assert summary["backbone"]["model"] == str(tiny_vit) and summary["backbone"]["dimension"] == 32
    assert summary["parts"][1]["leaked_from_training"]["exact"] == 2
    for name in ("report.md", "label_issues.csv", "duplicates.csv", "outliers.csv", "class_balance.csv", "duplicates.png"):
        assert (out / "inspect" / name).is_file()


def test_help_and_a_bad_recipe_import_no_heavy_library(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"description": "d", "model": {"name_or_path": "m"}, "data": {"dataset": "x", "leaked_eval": "keep"},
                               "output_dir": str(tmp_path / "o")}))
    probe = (
        "import json, sys\nfrom finetune.run import main\ncodes = []\n"
        "for argv in ([['inspect', '--help'], ['inspect', sys.argv[1]]]):\n"
        "    try:\n        codes.append(main(argv))\n    except SystemExit as e:\n        codes.append(e.code)\n"
        "print(json.dumps({'codes': codes, 'loaded': sorted(m for m in ('torch', 'datasets', 'transformers', 'matplotlib') if m in sys.modules)}))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", probe, str(bad)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 2], "loaded": []}, result.stderr[-2000:]
    assert "'data.leaked_eval' must be one of 'report', 'drop'" in result.stderr


def test_training_drops_the_leaked_eval_images(tmp_path, tiny_vit) -> None:
    """``data.leaked_eval: "drop"`` in a real (tiny) training run: the eval images that copy a
    training image are out of the eval split, named in data_report.json and the log, and the
    final scores count the others."""
    truth = generated_set(tmp_path / "images", per_class=8, test_per_class=3)
    out = tmp_path / "run"
    recipe = json.loads(recipe_file(tmp_path, tiny_vit, tmp_path / "images", out).read_text())
    # Threshold 1: the copies with the very pixels of a training image (the random tiny
    # model's features say nothing about which images are alike).
    recipe["data"] |= {"leaked_eval": "drop", "duplicate_threshold": 1.0}
    recipe["model"]["probe_solver"] = "lbfgs"
    recipe["model"]["probe_l2"] = [0.01]
    path = tmp_path / "drop.json"
    path.write_text(json.dumps(recipe))
    result = run_cli("train", "--recipe", str(path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "data_report.json").read_text())
    assert "data_report.json" in run_files.recorded(out)  # rewritten after the drop, still the run's
    record = report["leaked_eval"]
    assert {Path(i["source"]).name for i in record["images"]} == {"copy_0.png", "copy_1.png"}
    assert record["dropped"] == 2 and record["exact"] == 2 and record["eval_images"] == 9 + len(truth["planted"])
    assert "data.leaked_eval 'drop': 2 of 15 eval images" in result.stderr
    assert json.loads((out / "eval_report.json").read_text())["num_images"] == 13
    card = (out / "README.md").read_text()
    assert "2 of its 15 images duplicated a training image (2 with the same pixels" in card
    assert "`data.leaked_eval: drop`" in card
