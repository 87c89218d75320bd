"""``data.leaked_eval: "drop"`` (training/prepared_data.py): the eval images dropped are exactly the leaked ones, and the rest of the eval split is untouched."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune import data
from finetune.recipe import recipe_from_dict
from finetune.training import prepared_data as prepare


def picture(seed: int, size: int = 24) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)


def folder(root: Path) -> tuple[Path, set[str]]:
    """train/ and test/ of two classes; three test images copy training images (the same
    file, saved again as JPEG, resized and saved as JPEG)."""
    copies = set()
    for c, name in enumerate(["a", "b"]):
        (root / "train" / name).mkdir(parents=True)
        (root / "test" / name).mkdir(parents=True)
        for i in range(8):
            picture(100 * c + i).save(root / "train" / name / f"{i}.png")
        for i in range(5):
            picture(1000 + 100 * c + i).save(root / "test" / name / f"{i}.png")
    original = picture(3)
    buffer = io.BytesIO()
    original.save(buffer, "JPEG", quality=75)
    resized = io.BytesIO()
    original.resize((20, 20), Image.Resampling.BILINEAR).save(resized, "JPEG", quality=75)
    original.save(root / "test" / "a" / "copy-same.png")
    Image.open(io.BytesIO(buffer.getvalue())).save(root / "test" / "a" / "copy-jpeg.png")
    Image.open(io.BytesIO(resized.getvalue())).save(root / "test" / "a" / "copy-resized.png")
    copies |= {"copy-same.png", "copy-jpeg.png", "copy-resized.png"}
    return root, copies


def random_features(model_cfg, class_names, processor, datasets, *, mirror, batch_size=64, device=None, args=None):
    """In place of the backbone: features drawn from each image's pixels' hash (unlike for every
    two images), so only the thumbnails and the hashes can find the copies."""
    from finetune.probe.backbone import BackboneFeatures

    out = []
    for dataset in datasets:
        rows = data.FastRows(dataset)
        pixels = rows.__getitems__(list(range(len(rows)))).collated["pixel_values"].numpy()
        out.append(torch.stack([
            torch.from_numpy(np.random.default_rng(int.from_bytes(hashlib.blake2b(p.tobytes(), digest_size=8).digest(), "little")).normal(0, 1, 16)).float()
            for p in pixels
        ]))
    return BackboneFeatures(out, "test", 0.0, 0, mirror)


def prepared_for(root: Path, model: Path, **data_keys):
    from finetune.models.classifier import load_processor

    recipe = recipe_from_dict({
        "description": "d", "model": {"name_or_path": str(model)}, "output_dir": str(root / "out"),
        "data": {"dataset": str(root), "leaked_eval": "drop", **data_keys},
    })
    processor = load_processor(recipe.model, None)
    return recipe, processor, prepare.prepare_data(recipe, processor, seed=0)


def pixels(dataset) -> np.ndarray:
    rows = data.FastRows(dataset)
    return rows.__getitems__(list(range(len(rows)))).collated["pixel_values"].numpy()


def test_the_dropped_eval_images_are_exactly_the_leaked_ones(tmp_path, tiny_vit, monkeypatch) -> None:
    root, copies = folder(tmp_path / "images")
    monkeypatch.setattr(prepare, "backbone_features", random_features)
    recipe, processor, prepared = prepared_for(root, tiny_vit)
    before = pixels(prepared.eval)
    sources = data.image_sources(prepared.splits.eval, range(len(prepared.eval)), prepared.splits.image_column)
    after = prepare.drop_leaked_eval(prepared, recipe, processor)
    record = after.data_report["leaked_eval"]
    assert {Path(i["source"]).name for i in record["images"]} == copies
    assert record["dropped"] == 3 and record["exact"] == 1 and record["near"] == 2 and record["eval_images"] == 13
    dropped = [k for k, s in enumerate(sources) if Path(s).name in copies]
    keep = [k for k in range(len(sources)) if k not in dropped]
    # The rest of the eval split, untouched and in order: the same pixels and labels.
    assert np.array_equal(pixels(after.eval), before[keep])
    assert np.array_equal(np.asarray(data.column(after.eval, "labels")), np.asarray(data.column(prepared.eval, "labels"))[keep])
    # Each dropped image names the training image it copies.
    train_sources = data.image_sources(prepared.splits.train, range(len(prepared.splits.train)), "image")
    assert {train_sources[i["train_split_row"]].endswith("train/a/3.png") for i in record["images"]} == {True}
    assert any("data.leaked_eval 'drop': 3 of 13 eval images" in n for n in after.data_report["notes"])
    # Training's data and the report it started from are as they were.
    assert after.train is prepared.train and "leaked_eval" not in prepared.data_report and len(prepared.eval) == 13


def test_dropping_rows_keeps_every_other_row_in_order() -> None:
    from datasets import Array3D, Dataset, Features, Value

    images = np.arange(10 * 3 * 2 * 2, dtype=np.uint8).reshape(10, 3, 2, 2)
    ds = Dataset.from_dict({"pixel_values": images, "labels": list(range(10))},
                           features=Features({"pixel_values": Array3D((3, 2, 2), "uint8"), "labels": Value("int64")}))
    ds.set_format("numpy", columns=["pixel_values", "labels"])
    base = prepare.Prepared(splits=None, train=ds, validation=ds, eval=ds, data_report={"notes": ["earlier"]})
    after = prepare.drop_eval_rows(base, [2, 5, 7], {"exact": 1, "near": 2, "threshold": 0.95})
    assert np.array_equal(pixels(after.eval), images[[0, 1, 3, 4, 6, 8, 9]])
    assert after.validation is after.eval  # the validation piece was what got reported: the same rows go
    assert after.data_report["notes"][0] == "earlier" and len(after.data_report["notes"]) == 2
    kept = prepare.drop_eval_rows(dataclasses.replace(base, validation=None), [], {})
    assert kept.eval is ds and kept.validation is None


@pytest.mark.parametrize("value", [0.0, 1.5])
def test_the_threshold_is_a_similarity(value: float) -> None:
    from finetune.recipe import RecipeError

    with pytest.raises(RecipeError, match="'data.duplicate_threshold' is a cosine similarity"):
        recipe_from_dict({"description": "d", "model": {"name_or_path": "m"}, "output_dir": "o",
                          "data": {"dataset": "x", "duplicate_threshold": value}})
