"""classifier.py with trust_remote_code: the pinned revision covers the code, and an auto_map into another repository is refused before transformers reads the files. No network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from finetune.models import classifier
from finetune.recipe import ModelConfig
from finetune.utils.errors import ModelError

PIN = "0123456789abcdef0123456789abcdef01234567"


def _cfg(name: str, **kw) -> ModelConfig:
    return ModelConfig(name_or_path=name, trust_remote_code=True, revision=PIN, **kw)


def _with_auto_map(src: Path, dst: Path, file: str, auto_map: dict) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / file).read_text())
    config["auto_map"] = auto_map
    (dst / file).write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("file", ["config.json", "preprocessor_config.json"])
def test_an_auto_map_into_another_repository_is_refused(tiny_vit: Path, tmp_path: Path, file: str, monkeypatch) -> None:
    model = _with_auto_map(tiny_vit, tmp_path / "model", file, {
        "AutoConfig": "other/repo--configuration_evil.EvilConfig",
        "AutoModelForImageClassification": "other/repo--modeling_evil.EvilModel",
    })
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    def never(*args, **kwargs):
        raise AssertionError("transformers was asked to read the model")

    for auto in (AutoConfig, AutoImageProcessor, AutoModelForImageClassification):
        monkeypatch.setattr(auto, "from_pretrained", never)
    for load in (
        lambda: classifier.load_config(_cfg(str(model))),
        lambda: classifier.load_processor(_cfg(str(model)), None),
        lambda: classifier.load_model(_cfg(str(model)), ["a", "b"], None),
    ):
        with pytest.raises(ModelError) as err:
            load()
        message = str(err.value)
        assert "\n" not in message and f"{file} of '{model}'" in message
        assert "another repository (auto_map 'other/repo--" in message and "model.revision does not cover" in message


def test_the_pinned_revision_is_the_codes_revision_too(tiny_vit: Path, monkeypatch) -> None:
    from transformers import AutoConfig

    seen = {}

    def spy(path, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(AutoConfig, "from_pretrained", spy)
    with pytest.raises(OSError):
        classifier.load_config(_cfg(str(tiny_vit)))
    assert seen["trust_remote_code"] is True and seen["revision"] == PIN and seen["code_revision"] == PIN
    seen.clear()
    with pytest.raises(OSError):
        classifier.load_config(ModelConfig(name_or_path=str(tiny_vit)))
    assert "code_revision" not in seen and seen["trust_remote_code"] is False


def test_a_hub_models_own_repository_in_its_auto_map_is_allowed(tiny_vit: Path, tmp_path: Path, monkeypatch) -> None:
    """"me/model--module.Class" in me/model itself is the pinned code; "other/x--..." is not.
    The Hub's files come from a stand-in for the download (no network)."""
    import huggingface_hub

    files = {}
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, revision=None: files[(repo, name, revision)])
    config = tmp_path / "config.json"
    files[("me/model", "config.json", PIN)] = str(config)
    config.write_text(json.dumps({"auto_map": {"AutoModelForImageClassification": ["me/model--modeling.M", None]}}))
    classifier.check_remote_code(_cfg("me/model"))
    config.write_text(json.dumps({"auto_map": {"AutoModelForImageClassification": "other/x--modeling.M"}}))
    with pytest.raises(ModelError, match="auto_map 'other/x--modeling.M'"):
        classifier.check_remote_code(_cfg("me/model"))
