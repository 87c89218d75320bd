"""engine.py: the engine of the cached-feature pass: ONNX Runtime's features against PyTorch's,
and when ``auto`` chooses which."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from finetune.models.classifier import ModelError
from finetune.probe import engine as feature_runtime
from finetune.probe import features
from finetune.probe.engine import FeatureRuntime
from finetune.recipe import RecipeError, recipe_from_dict
from finetune.utils import extras
from tests.helpers.features import batch_transform, decode_folder, load_probe_model
from tests.helpers.images import make_image_folder
from tests.helpers.recipes import base


def _setup(model_path: Path, tmp_path: Path):
    loaded, processor = load_probe_model(model_path)
    decoded = decode_folder(make_image_folder(tmp_path / "images", per_class=3, splits=("train",)), processor)
    return loaded.model, decoded, batch_transform(processor)


def _torch_features(model, decoded, transform):
    return features.compute_features(model, decoded, transform, device="cpu", batch_size=4)


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_resnet", "tiny_timm"])
def test_onnxruntime_features_match_pytorch_including_a_padded_last_batch(fixture: str, request, tmp_path: Path) -> None:
    model, decoded, transform = _setup(request.getfixturevalue(fixture), tmp_path)
    reference = _torch_features(model, decoded, transform)
    runtime = FeatureRuntime("onnxruntime")
    # 9 images in batches of 4: the last batch (1 image) runs padded to the graph's 4.
    got = features.compute_features(model, decoded, transform, device="cpu", batch_size=4, runtime=runtime)
    assert runtime.runner is not None and runtime.chosen.startswith("onnxruntime (model.feature_runtime onnxruntime")
    assert runtime.runner.batch_size == 4 and len(decoded) % 4 == 1
    assert torch.equal(got.labels, reference.labels)
    assert got.features.dtype == torch.float32 and got.features.shape == reference.features.shape
    torch.testing.assert_close(got.features, reference.features, rtol=feature_runtime.RTOL, atol=feature_runtime.ATOL)
    assert not torch.equal(got.features, reference.features) or fixture == "tiny_vit"  # really another engine
    assert not model.training  # the export left the model as the pass had it


def test_auto_switches_by_the_size_of_the_split_and_builds_one_session(tiny_resnet: Path, tmp_path: Path, monkeypatch) -> None:
    model, decoded, transform = _setup(tiny_resnet, tmp_path)
    built = []
    real_build = feature_runtime.build
    monkeypatch.setattr(feature_runtime, "build", lambda *a, **k: built.append(1) or real_build(*a, **k))
    runtime = FeatureRuntime("auto")
    monkeypatch.setattr(feature_runtime, "AUTO_MIN_IMAGES", 10)
    small = features.compute_features(model, decoded, transform, device="cpu", batch_size=4, runtime=runtime)
    assert runtime.runner is None and not built and "9 images, under the 10" in runtime.chosen
    assert torch.equal(small.features, _torch_features(model, decoded, transform).features)
    monkeypatch.setattr(feature_runtime, "AUTO_MIN_IMAGES", 9)
    features.compute_features(model, decoded, transform, device="cpu", batch_size=4, runtime=runtime)
    assert runtime.runner is not None and runtime.chosen.startswith("onnxruntime (auto;")
    features.compute_features(model, decoded.select(range(5)), transform, device="cpu", batch_size=4, runtime=runtime)
    assert built == [1]  # the other splits reuse the session


def test_auto_keeps_pytorch_off_the_cpu_in_lower_precision_or_without_onnxruntime(monkeypatch) -> None:
    cpu, big = torch.device("cpu"), 10 * feature_runtime.AUTO_MIN_IMAGES
    runtime = FeatureRuntime("auto")
    assert not runtime.wants_onnx(torch.device("cuda"), big, False) and "the run is on cuda" in runtime.chosen
    assert not runtime.wants_onnx(cpu, big, False)  # settled for the run
    runtime = FeatureRuntime("auto")
    assert not runtime.wants_onnx(cpu, big, True) and "lower precision" in runtime.chosen
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None)
    assert extras.problem("export", ("onnxruntime", "onnx")) == f"onnxruntime and onnx not installed; {extras.hint('export')}"
    runtime = FeatureRuntime("auto")
    assert not runtime.wants_onnx(cpu, big, False) and "finetune[export]" in runtime.chosen
    assert not FeatureRuntime("torch").wants_onnx(cpu, big, False)
    with pytest.raises(ModelError, match="runs the feature pass on the CPU, but this run is on cuda"):
        FeatureRuntime("onnxruntime").wants_onnx(torch.device("cuda"), 1, False)
    asked = FeatureRuntime("onnxruntime")
    assert asked.wants_onnx(cpu, 1, True) and "fp32, where training.bf16/fp16" in asked.note


def test_a_failed_export_falls_back_under_auto_and_stops_a_run_that_asked_for_it(
    tiny_resnet: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    model, decoded, transform = _setup(tiny_resnet, tmp_path)
    monkeypatch.setattr(feature_runtime, "AUTO_MIN_IMAGES", 1)

    def broken(*args, **kwargs):
        raise feature_runtime.RuntimeProblem("export failed: RuntimeError: unsupported operator")

    monkeypatch.setattr(feature_runtime, "build", broken)
    runtime = FeatureRuntime("auto")
    with caplog.at_level(logging.WARNING, logger="finetune"):
        got = features.compute_features(model, decoded, transform, device="cpu", batch_size=4, runtime=runtime)
    assert torch.equal(got.features, _torch_features(model, decoded, transform).features)
    assert "ONNX Runtime not used (export failed: RuntimeError: unsupported operator)" in caplog.text
    assert runtime.decided and runtime.runner is None and "unsupported operator" in runtime.chosen
    with pytest.raises(ModelError, match="model.feature_runtime 'onnxruntime': export failed.*set it to 'torch'"):
        features.compute_features(model, decoded, transform, device="cpu", batch_size=4, runtime=FeatureRuntime("onnxruntime"))


def test_a_session_whose_features_disagree_with_pytorch_is_not_used(tiny_resnet: Path, tmp_path: Path, monkeypatch) -> None:
    model, decoded, transform = _setup(tiny_resnet, tmp_path)
    real_call = feature_runtime.OnnxFeatures.__call__
    monkeypatch.setattr(feature_runtime.OnnxFeatures, "__call__", lambda self, pixels: real_call(self, pixels) + 1e-2)
    monkeypatch.setattr(feature_runtime, "AUTO_MIN_IMAGES", 1)
    runtime = FeatureRuntime("auto")
    got = features.compute_features(model, decoded, transform, device="cpu", batch_size=4, runtime=runtime)
    assert runtime.runner is None and "differ from PyTorch's by up to 1.00e-02" in runtime.chosen
    assert torch.equal(got.features, _torch_features(model, decoded, transform).features)
    with pytest.raises(ModelError, match="differ from PyTorch's"):
        features.compute_features(model, decoded, transform, device="cpu", batch_size=4, runtime=FeatureRuntime("onnxruntime"))


def test_recipe_asking_for_onnxruntime_without_it_installed_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(extras, "problem", lambda extra, modules=None: "onnxruntime not installed (pip install 'finetune[export]')")
    raw = {**base(), "model": {"name_or_path": "m", "strategy": "linear_probe", "feature_runtime": "onnxruntime"}}
    with pytest.raises(RecipeError, match=r"'model.feature_runtime' 'onnxruntime': onnxruntime not installed \(pip install"):
        recipe_from_dict(raw, "r.json")
    raw["model"]["feature_runtime"] = "auto"
    assert recipe_from_dict(raw, "r.json").model.feature_runtime == "auto"


def test_a_model_too_big_for_an_in_memory_graph_is_not_exported(tiny_resnet: Path, tmp_path: Path, monkeypatch) -> None:
    model, decoded, transform = _setup(tiny_resnet, tmp_path)
    monkeypatch.setattr(feature_runtime, "PROTOBUF_LIMIT", 1000)  # bytes: the tiny model is larger
    with pytest.raises(feature_runtime.RuntimeProblem, match="exceed the 2 GiB"):
        feature_runtime.build(model, features.find_head(model)[1], torch.zeros(1, 3, 32, 32), 4)


def test_sessions_agree_bitwise_across_builds_threads_and_padding(tiny_resnet: Path, tmp_path: Path) -> None:
    """What a resumed run and a run on more processes rely on: a rerun's features are the
    first attempt's, bit for bit, whatever the thread count, and a row's features do not
    depend on the padding around it."""
    model, decoded, transform = _setup(tiny_resnet, tmp_path)
    _, head = features.find_head(model)
    pixels = transform(decoded[:8]["pixel_values"], train=False)
    threads = torch.get_num_threads()
    try:
        first = feature_runtime.build(model, head, pixels, 8)(pixels)
        torch.set_num_threads(1)
        again = feature_runtime.build(model, head, pixels, 8)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(again(pixels), first)
    assert torch.equal(again(pixels[:3]), first[:3])  # 3 real rows, 5 of padding
