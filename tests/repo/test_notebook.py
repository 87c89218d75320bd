"""The Colab notebook: stored without outputs, every command and recipe in it exists and
validates, and its cells that need neither a GPU nor the network run, in order, offline on CPU.

Cells tagged ``needs-gpu``, ``needs-network`` or ``colab-only`` (Colab's upload dialog and
Drive, the login prompt, TensorBoard's web view) are left out of the run. The install cell is
one of them: here the project under test is already importable (the kernel gets this checkout
on ``PYTHONPATH``, and CI installs it), where installing from the git URL would test the
repository's published state instead of this checkout.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import sys
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from tests.helpers import ROOT
from tests.helpers.cli import run_cli

NOTEBOOK = ROOT / "notebooks" / "finetune_colab.ipynb"
#: The tags of the cells CI leaves out.
SKIP = {"needs-gpu", "needs-network", "colab-only"}
#: The tag of the cell that holds the notebook's settings (papermill's convention); CI runs
#: it with ``QUICK = True``, the shorter quickstart, to stay within about 4 minutes.
PARAMETERS = "parameters"
#: What a Python expression inside a command's f-string stands for when the command is
#: checked without running the notebook (a path, a repo id).
PLACEHOLDER = "NOTEBOOK-VALUE"


def _notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def _tags(cell) -> set[str]:
    return set(cell.metadata.get("tags", []))


def _code_cells() -> list:
    return [c for c in _notebook().cells if c.cell_type == "code"]


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
                found.append((shlex.split(_text(node.args[0])), _tags(cell)))
    return found


def test_notebook_is_stored_without_outputs() -> None:
    for index, cell in enumerate(_notebook().cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"cell {index} of {NOTEBOOK.name} has outputs or an execution count; clear them before "
                "committing (Edit > Clear all outputs, in Colab or Jupyter)"
            )


def test_notebook_cells_that_cannot_run_in_ci_are_tagged() -> None:
    """A cell that needs Colab, the network or a GPU carries the tag that keeps it out of CI."""
    notebook = _notebook()
    nbformat.validate(notebook)
    for index, cell in enumerate(c for c in notebook.cells if c.cell_type == "code"):
        source, tags = cell.source, _tags(cell)
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


@pytest.mark.e2e
def test_notebook_runs_offline_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    notebook = _notebook()
    notebook.cells = [c for c in notebook.cells if not _tags(c) & SKIP]
    settings = [c for c in notebook.cells if PARAMETERS in _tags(c)]
    assert len(settings) == 1 and "QUICK = False" in settings[0].source, "the notebook's settings cell has changed"
    settings[0].source = settings[0].source.replace("QUICK = False", "QUICK = True")
    # The kernel (and the finetune commands it starts) import this checkout, offline, with the
    # console scripts of the interpreter running the tests.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PATH", os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # CellExecutionError, with the cell and its traceback, on any cell's error

    def text(cell) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    printed = [text(c) for c in notebook.cells if c.cell_type == "code"]
    assert "No GPU: finetune trains in fp32" in printed[0] or "mixed precision" in printed[0], printed[0]
    quickstart = json.loads((tmp_path / "outputs" / "quickstart" / "eval_results.json").read_text())
    assert quickstart["eval_accuracy"] > 0.3, quickstart  # the short quickstart (0.48 measured); chance is 0.1
    report_cells = [c for c in notebook.cells if "show_report(" in c.source and c.cell_type == "code"]
    for cell in report_cells:  # the metrics, three pictures and the card, inline
        shown = [set(o.data) for o in cell.outputs if o.output_type == "display_data"]
        assert sum("image/png" in d for d in shown) == 3 and sum("text/markdown" in d for d in shown) == 1, shown
    # Running the finished run's command again resumes it instead of training afresh.
    own = tmp_path / "outputs" / "my-images"
    assert (own / "model.safetensors").is_file()
    assert sum("resuming from" in p for p in printed) == 1, "the second run of the own-images command did not resume"
    assert any("card ok" in p for p in printed), "the push dry run did not pass"
    predicted = next(p for p in printed if "path,label_1" in p)
    assert len([line for line in predicted.splitlines() if "digit_" in line]) == 3, predicted
    # TensorBoard: each run wrote event files with the training loss and the validation scores.
    curves = next(p for p in printed if "curves:" in p)
    assert curves.count("curves:") == 2 and curves.count("train/loss") == 2 and curves.count("eval/accuracy") == 2, curves
