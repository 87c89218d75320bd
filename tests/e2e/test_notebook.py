"""The Colab notebook's cells that need neither a GPU nor the network run, in order, offline on CPU.

Cells tagged ``needs-gpu``, ``needs-network`` or ``colab-only`` (Colab's upload dialog and
Drive, the login prompt, TensorBoard's web view) are left out of the run. The install cell is
one of them: here the project under test is already importable (the kernel gets this checkout
on ``PYTHONPATH``, and CI installs it), where installing from the git URL would test the
repository's published state instead of this checkout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.notebook import PARAMETERS, SKIP, cell_tags, read_notebook


@pytest.mark.e2e
def test_notebook_runs_offline_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    notebook = read_notebook()
    notebook.cells = [c for c in notebook.cells if not cell_tags(c) & SKIP]
    settings = [c for c in notebook.cells if PARAMETERS in cell_tags(c)]
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
