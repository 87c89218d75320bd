"""A recipe with a study block, as a dict."""

from __future__ import annotations


def base(**study) -> dict:
    """A linear-probe recipe whose study block holds ``study``."""
    return {
        "description": "d",
        "model": {"name_or_path": "some/model", "strategy": "linear_probe"},
        "data": {"dataset": "some/data"},
        "training": {"seed": 10},
        "output_dir": "out",
        "study": study,
    }
