"""The package's layers (pyproject.toml's [tool.importlinter]): imports only point down, and
the recipe layer and the exported model's runner import no torch. import-linter reads every
import, function-level ones included, so a circle cannot hide behind a late import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT + ["--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def test_the_import_contracts_are_kept() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken" in result.stdout, result.stdout[-2000:]


def test_an_import_that_points_up_breaks_the_layers(tmp_path: Path) -> None:
    """The contract is not vacuous: a helper that imports the command line, planted in a copy
    of the package, is reported with the chain that breaks it."""
    shutil.copytree(ROOT / "finetune", tmp_path / "finetune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    files = tmp_path / "finetune" / "utils" / "files.py"
    files.write_text(files.read_text() + "\n\ndef _up():\n    from finetune.cli import main  # noqa: F401\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "finetune.utils.files -> finetune.cli.main" in result.stdout, result.stdout[-3000:]


def test_no_module_imports_another_modules_private_names() -> None:
    """A name that several modules share is public (no leading underscore); a private one
    stays in its module, so it can change without breaking another."""
    import ast

    found = []
    for path in sorted((ROOT / "finetune").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("finetune"):
                found += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not found, found
