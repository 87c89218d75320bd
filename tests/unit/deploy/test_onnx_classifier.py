"""onnx_classifier.py: the torch-free preprocessing equals the processors' own, images are read as
training reads them, class names as transformers reads them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.deploy import onnx_classifier as onnx_model
from tests.helpers.export import odd_sized_images
from tests.helpers.models import make_tiny_resnet, make_tiny_timm, make_tiny_vit

pytest.importorskip("onnxruntime")


def _bit_processor(path: Path) -> Path:
    """A shortest-edge resize then a centre crop (DINOv2's and BiT's processor)."""
    from transformers import BitImageProcessor

    BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    (path / "config.json").write_text(json.dumps({"id2label": {"0": "a"}}))
    return path


@pytest.mark.parametrize("make", [make_tiny_vit, make_tiny_resnet, make_tiny_timm, _bit_processor])
def test_preprocessing_equals_the_processors_pil_implementation(make, tmp_path):
    """numpy + PIL preprocessing = the saved processor's own PIL computation (ViT's exact
    resize, ConvNeXt's crop_pct, BiT's shortest edge + crop, timm's evaluation transform)."""
    from transformers import AutoImageProcessor

    folder = make(tmp_path / "model")
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    ours = onnx_model.Preprocessor.from_folder(folder)
    for image in odd_sized_images():
        theirs = np.asarray(processor(images=[image], return_tensors="pt")["pixel_values"].float().numpy())
        got = ours([image])
        assert got.shape == theirs.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, theirs, atol=1e-5)


def test_read_image_and_junk_rule_equal_the_data_package(tmp_path):
    """onnx_model.py reads images as training does (the same torch-free module), and its copy of the junk rule equals the data package's."""
    from finetune import data

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    files = {
        "rgba.png": Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (20, 30), dtype=np.uint8)]), "RGBA"),
        "grey.png": Image.fromarray(rgb[..., 0], "L"),
        "deep.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "palette.gif": Image.fromarray(rgb).convert("P"),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # turned a quarter
    rotated.save(tmp_path / "exif.jpg", exif=exif)
    for path in sorted(tmp_path.iterdir()):
        ours, theirs = onnx_model.read_image(str(path)), data.to_rgb(data.open_image(str(path)))
        assert ours.mode == "RGB" and np.array_equal(np.asarray(ours), np.asarray(theirs)), path.name
        assert np.array_equal(np.asarray(onnx_model.read_image({"bytes": path.read_bytes(), "path": None})), np.asarray(theirs))


@pytest.mark.parametrize("make", [make_tiny_vit, make_tiny_timm])
def test_class_names_read_as_transformers_reads_them(make, tmp_path):
    """timm configs keep the classes in label_names (no id2label in config.json)."""
    from transformers import AutoConfig

    folder = make(tmp_path / "model", num_labels=3)
    config = AutoConfig.from_pretrained(folder)
    config.id2label = {0: "cat", 1: "dog", 2: "émeu"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    if hasattr(config, "label_names"):
        config.label_names = ["cat", "dog", "émeu"]
    config.save_pretrained(folder)
    reloaded = AutoConfig.from_pretrained(folder)
    assert onnx_model.class_names(folder) == [reloaded.id2label[i] for i in range(3)] == ["cat", "dog", "émeu"]
