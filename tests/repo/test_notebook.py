"""The Colab notebook: stored without outputs, its cells that cannot run in CI tagged, every
command in it parses, and every recipe it writes validates and equals the shipped one."""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from tests.helpers import ROOT
from tests.helpers.cli import run_cli
from tests.helpers.notebook import NOTEBOOK, PARAMETERS, SKIP, cell_tags, read_notebook

#: What a Python expression inside a command's f-string stands for when the command is
#: checked without running the notebook (a path, a repo id).
PLACEHOLDER = "NOTEBOOK-VALUE"


def _code_cells() -> list:
    return [c for c in read_notebook().cells if c.cell_type == "code"]


def _written_recipes() -> dict[str, dict]:
    """The recipes the notebook writes with ``%%writefile NAME.json``, by file name."""
    recipes = {}
    for cell in _code_cells():
        first, _, body = cell.source.partition("\n")
        if first.startswith("%%writefile ") and first.endswith(".json"):
            recipes[first.split()[1]] = json.loads(body)
    return recipes


def _text(node: ast.expr) -> str:
    """A string literal, with every ``{expression}`` of an f-string as PLACEHOLDER."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else PLACEHOLDER for v in node.values)
    raise AssertionError(f"run() takes a string literal or an f-string, got: {ast.unparse(node)}")


def _commands() -> list[tuple[list[str], set[str]]]:
    """Every command line the notebook runs (through its ``run`` helper), split, with its cell's tags."""
    found = []
    for cell in _code_cells():
        tree = ast.parse(TransformerManager().transform_cell(cell.source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "run":
                found.append((shlex.split(_text(node.args[0])), cell_tags(cell)))
    return found


def test_notebook_is_stored_without_outputs() -> None:
    for index, cell in enumerate(read_notebook().cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"cell {index} of {NOTEBOOK.name} has outputs or an execution count; clear them before "
                "committing (Edit > Clear all outputs, in Colab or Jupyter)"
            )


def test_notebook_cells_that_cannot_run_in_ci_are_tagged() -> None:
    """A cell that needs Colab, the network or a GPU carries the tag that keeps it out of CI."""
    notebook = read_notebook()
    nbformat.validate(notebook)
    for index, cell in enumerate(c for c in notebook.cells if c.cell_type == "code"):
        source, tags = cell.source, cell_tags(cell)
        assert tags <= SKIP | {PARAMETERS}, f"code cell {index}: unknown tags {sorted(tags - SKIP - {PARAMETERS})}"
        if "google.colab" in source or "%tensorboard" in source:
            assert "colab-only" in tags, f"code cell {index} needs Colab or a browser: tag it colab-only"
        if "pip install" in source or "notebook_login" in source:
            assert "needs-network" in tags, f"code cell {index} needs the network: tag it needs-network"
        # Commands go through run(), which stops the notebook when they fail: `!cmd` would not.
        assert not any(line.lstrip().startswith("!") for line in source.splitlines()), f"code cell {index}: use run()"
    commands = _commands()
    assert commands, "no run(...) command found in the notebook"
    for argv, tags in commands:
        if argv[:2] == ["finetune", "push"] and "--dry-run" not in argv:
            assert "needs-network" in tags, f"{shlex.join(argv)}: an upload needs the network: tag it needs-network"
        if "cifar10_vit.json" in argv:  # a Hub model and data set, and a GPU's worth of training
            assert {"needs-gpu", "needs-network"} <= tags, f"{shlex.join(argv)}: tag it needs-gpu and needs-network"


def test_notebook_commands_exist() -> None:
    """Every command line parses with finetune's own parser: the subcommands and options exist."""
    from finetune.cli.main import COMMANDS, build_parser

    for argv, _ in _commands():
        assert argv[0] == "finetune", f"the notebook runs something other than finetune: {shlex.join(argv)}"
        assert len(argv) > 1 and argv[1] in COMMANDS, f"unknown finetune command: {shlex.join(argv)}"
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"finetune's parser refuses the notebook's command: {shlex.join(argv)}")


def test_notebook_recipes_validate(tmp_path: Path) -> None:
    """`finetune validate` accepts every recipe the notebook writes, bare and with the `--set`
    overrides of each `finetune train` command that uses it."""
    recipes = _written_recipes()
    assert {"quickstart.json", "cifar10_vit.json"} <= set(recipes), sorted(recipes)
    for name, recipe in recipes.items():
        (tmp_path / name).write_text(json.dumps(recipe))
    checks = [[name] for name in recipes]
    for argv, _ in _commands():
        if argv[1] == "train":
            recipe = argv[argv.index("--recipe") + 1]
            assert recipe in recipes, f"{shlex.join(argv)}: the notebook does not write {recipe}"
            checks.append([recipe] + [arg for arg in argv[2:] if arg not in ("--recipe", recipe)])
    for args in checks:
        result = run_cli("validate", *args, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, f"finetune validate {shlex.join(args)}:\n{result.stderr}"


def test_notebook_recipes_are_the_shipped_ones() -> None:
    """A recipe the notebook writes under a shipped recipe's name is that recipe, plus TensorBoard
    reporting: the notebook's numbers are the ones the README and the recipe state."""
    for name, recipe in _written_recipes().items():
        shipped = ROOT / "recipes" / name
        if shipped.is_file():
            assert recipe["training"].pop("report_to") == ["tensorboard"]
            assert recipe == json.loads(shipped.read_text()), f"the notebook's {name} differs from recipes/{name}"
