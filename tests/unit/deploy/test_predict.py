"""predict.py and saved.py: `finetune predict` (and loading a saved run) on a run trained through the real CLI."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from finetune.cli.main import main
from tests.helpers.images import CLASSES, class_image
from tests.helpers.runs import trained_run

PNGS = ("confusion_matrix.png", "misclassified.png", "training_curves.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture
def mixed_folder(tmp_path, run):
    """Images in nested folders, plus things that are not images and OS junk."""
    import numpy as np

    root = tmp_path / "to-label"
    rng = np.random.default_rng(5)
    (root / "b" / "deeper").mkdir(parents=True)
    (root / "a").mkdir()
    class_image("red", rng).save(root / "a" / "r.png")
    class_image("green", rng).convert("L").save(root / "b" / "grey.jpg")  # any mode → RGB
    class_image("blue", rng).save(root / "b" / "deeper" / "b.png")
    (root / "notes.txt").write_text("not an image")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 20)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "Thumbs.db").write_bytes(b"\x00" * 16)
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._r.png").write_bytes(b"\x00\x05\x16\x07")
    return root


def _rel(path: str, root) -> str:
    return path[len(str(root)) + 1 :]


def test_run_wrote_report_pngs(run):
    """train.py calls write_plots after the final evaluation."""
    for name in PNGS:
        with Image.open(run.out / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
    report = json.loads((run.out / "eval_report.json").read_text())
    assert report["num_images"] == 18


def test_predict_csv(run, mixed_folder, capsys):
    assert main(["predict", str(run.out), str(mixed_folder)]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    # deterministic order, nested folders walked, junk silently ignored
    assert [_rel(r["path"], mixed_folder) for r in rows] == [
        "a/r.png", "b/broken.jpg", "b/deeper/b.png", "b/grey.jpg", "notes.txt",
    ]
    good = [r for r in rows if not r["error"]]
    bad = {_rel(r["path"], mixed_folder): r["error"] for r in rows if r["error"]}
    assert len(good) == 3 and set(bad) == {"b/broken.jpg", "notes.txt"}
    for row in good:
        labels = [row[f"label_{i}"] for i in (1, 2, 3)]
        probs = [float(row[f"probability_{i}"]) for i in (1, 2, 3)]
        assert sorted(labels) == sorted(CLASSES)  # top-5 asked, 3 classes exist
        assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        assert sum(probs) <= 1 + 1e-5
    for path in bad:
        assert path in captured.err  # reported on stderr, not fatal
    assert "junk" not in captured.out and ".DS_Store" not in captured.out and "__MACOSX" not in captured.out


def test_predict_jsonl_to_file_top_k(run, mixed_folder, tmp_path, capsys):
    target = tmp_path / "labels.jsonl"
    code = main(["predict", str(run.out), str(mixed_folder / "a" / "r.png"), str(mixed_folder / "notes.txt"),
                 str(tmp_path / "missing.png"), "--top-k", "2", "--output", str(target), "--batch-size", "1"])
    assert code == 0
    assert capsys.readouterr().out == ""  # all went to --output
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["path"].rsplit("/", 1)[-1] for r in records] == ["r.png", "notes.txt", "missing.png"]
    first = records[0]["predictions"]
    assert len(first) == 2 and all(p["label"] in CLASSES for p in first)
    assert 0 < sum(p["probability"] for p in first) <= 1 + 1e-5
    assert "error" in records[1] and "predictions" not in records[1]
    assert "no such file" in records[2]["error"]


def test_predict_matches_transformers_pipeline(run, mixed_folder, capsys):
    """Same numbers as pipeline('image-classification') on the saved folder."""
    from transformers import pipeline

    image = mixed_folder / "b" / "deeper" / "b.png"
    assert main(["predict", str(run.out), str(image), "--format", "jsonl", "--top-k", "3"]) == 0
    ours = json.loads(capsys.readouterr().out)["predictions"]
    theirs = pipeline("image-classification", model=str(run.out), device="cpu")(str(image), top_k=3)
    assert [p["label"] for p in ours] == [p["label"] for p in theirs]
    for a, b in zip(ours, theirs):
        assert a["probability"] == pytest.approx(b["score"], abs=1e-4)


def test_min_probability_marks_unsure_images_abstained(run, mixed_folder, tmp_path, capsys):
    """Below the threshold an image is abstained on, its top classes still listed; the terminal counts them."""
    images = [str(mixed_folder / "a" / "r.png"), str(mixed_folder / "b" / "deeper" / "b.png"), str(mixed_folder / "notes.txt")]
    assert main(["predict", str(run.out), *images, "--format", "jsonl"]) == 0
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all("abstained" not in r for r in plain)  # no option, no field
    tops = [r["predictions"][0]["probability"] for r in plain[:2]]
    between = sum(sorted(tops)) / 2  # one image below it, one above
    assert main(["predict", str(run.out), *images, "--format", "jsonl", "--min-probability", f"{between:.6f}"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r.get("abstained") for r in records] == [p < between for p in tops] + [None]
    assert all(len(r["predictions"]) == 3 for r in records[:2])
    assert "labelled 2 image(s); abstained on 1 of them (top probability below" in captured.err
    # CSV: an 'abstained' column before 'error'; P = 1 abstains on every image.
    assert main(["predict", str(run.out), *images, "--min-probability", "1"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0])[-2:] == ["abstained", "error"]
    assert [r["abstained"] for r in rows] == ["true", "true", ""]


@pytest.mark.parametrize("value", ["1.5", "-0.1", "high"])
def test_min_probability_must_be_a_probability(run, mixed_folder, value, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["predict", str(run.out), str(mixed_folder), "--min-probability", value])
    assert exit.value.code == 2 and "must be a number in [0, 1]" in capsys.readouterr().err


def test_predict_nothing_readable_exits_2(run, tmp_path, capsys):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "readme.txt").write_text("hello")
    assert main(["predict", str(run.out), str(tmp_path / "only")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("finetune: error: none of the 1 file(s)")


def test_missing_output_dir(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope"), "--data", "x"]) == 2
    assert main(["predict", str(tmp_path), "img.png"]) == 2  # a folder, but no model in it
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"finetune: error: OUTPUT_DIR: no such folder '{tmp_path / 'nope'}'; pass the output_dir of a finished run",
        f"finetune: error: OUTPUT_DIR: '{tmp_path}' holds no saved model (config.json is missing); "
        "pass the output_dir of a finished run",
    ]


def test_predict_with_tta_averages_the_softmax_of_the_image_and_its_mirror(run, mixed_folder, capsys):
    """--tta hflip: each probability is the mean of the saved model's softmax on the processor's
    output and on its mirror image; the run recorded no views, so without the option: one view."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    image = mixed_folder / "a" / "r.png"
    assert main(["predict", str(run.out), str(image), "--format", "jsonl", "--top-k", "3", "--tta", "hflip"]) == 0
    captured = capsys.readouterr()
    assert "with test-time augmentation hflip" in captured.err
    ours = {p["label"]: p["probability"] for p in json.loads(captured.out)["predictions"]}
    model = AutoModelForImageClassification.from_pretrained(run.out).eval()
    processor = AutoImageProcessor.from_pretrained(run.out)
    with Image.open(image) as im:
        pixels = processor(images=[im.convert("RGB")], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = (model(pixel_values=pixels).logits.softmax(-1) + model(pixel_values=pixels.flip(-1)).logits.softmax(-1)) / 2
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    for name, p in zip(names, expected[0].tolist()):
        assert ours[name] == pytest.approx(p, abs=2e-6)
    assert main(["predict", str(run.out), str(image), "--format", "jsonl", "--top-k", "3"]) == 0
    captured = capsys.readouterr()
    plain = {p["label"]: p["probability"] for p in json.loads(captured.out)["predictions"]}
    assert "test-time augmentation" not in captured.err and plain != ours


def test_the_recorded_views_come_from_the_runs_recipe(tmp_path):
    from finetune.deploy.saved_run import recorded_tta

    assert recorded_tta(tmp_path) == "none"  # no recipe.json: a model saved by other tools
    (tmp_path / "recipe.json").write_text(json.dumps({"evaluation": {"tta": "hflip+crops"}}))
    assert recorded_tta(tmp_path) == "hflip+crops"
    for garbled in ("{", json.dumps({"evaluation": {"tta": "sideways"}}), json.dumps({"evaluation": "hflip"}), "[]"):
        (tmp_path / "recipe.json").write_text(garbled)
        assert recorded_tta(tmp_path) == "none"


def test_an_exported_model_scores_one_view(tmp_path):
    from finetune.deploy.onnx_classifier import OnnxClassifier
    from finetune.deploy.saved_run import Saved, choose_tta
    from finetune.utils.errors import InferenceError

    exported = OnnxClassifier.__new__(OnnxClassifier)  # choose_tta reads only its type
    assert choose_tta(exported, None) == "none" and choose_tta(exported, "none") == "none"
    with pytest.raises(InferenceError, match=r"^--tta hflip: an exported ONNX model scores one view per image"):
        choose_tta(exported, "hflip")
    saved = Saved(tmp_path, None, None, [], None, tta="hflip")
    assert choose_tta(saved, None) == "hflip" and choose_tta(saved, "none") == "none"
