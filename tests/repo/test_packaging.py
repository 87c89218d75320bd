"""pyproject.toml: each optional extra lists what its code imports, and CI installs it."""

from __future__ import annotations

from tests.helpers import ROOT


def test_the_export_extra_is_declared_and_installed_by_ci():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["export"]
    for package in ("onnx", "onnxruntime", "onnxscript"):
        assert any(req.split(">")[0].split("=")[0] == package for req in extra), package
    install = (ROOT / ".ci" / "run").read_text().split("pip install", 1)[1].splitlines()[0]
    assert "export" in install.split("[", 1)[1].split("]")[0].split(",")


def test_the_models_extra_installs_the_bigger_builtins() -> None:
    """pyproject's extra lists each built-in's package, and CI installs it."""
    import tomllib

    from finetune.recipe.builtins import MODELS_EXTRA, SPECS
    from tests.helpers import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"][MODELS_EXTRA]
    for short in ("efficientnet-lite1", "efficientnet-lite2"):
        package = SPECS[short].package
        assert any(req.startswith(package) for req in extra), f"{package} missing from the '{MODELS_EXTRA}' extra"
    assert any(req.startswith(SPECS["efficientnet-lite0"].package) for req in project["dependencies"])
    assert MODELS_EXTRA in (ROOT / ".ci" / "run").read_text().split("pip install", 1)[1].splitlines()[0]
