"""The Colab notebook as nbformat reads it, and the cell tags that say what CI leaves out."""

from __future__ import annotations

import nbformat

from tests.helpers import ROOT

NOTEBOOK = ROOT / "notebooks" / "finetune_colab.ipynb"
#: The tags of the cells CI leaves out.
SKIP = {"needs-gpu", "needs-network", "colab-only"}
#: The tag of the cell that holds the notebook's settings (papermill's convention); CI runs
#: it with ``QUICK = True``, the shorter quickstart, to stay within about 4 minutes.
PARAMETERS = "parameters"


def read_notebook() -> nbformat.NotebookNode:
    """The notebook as stored."""
    return nbformat.read(NOTEBOOK, as_version=4)


def cell_tags(cell) -> set[str]:
    """The tags of a cell."""
    return set(cell.metadata.get("tags", []))
