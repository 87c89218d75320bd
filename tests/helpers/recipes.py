"""Recipes as dicts: the smallest valid one, and recipes that break in known ways."""

from __future__ import annotations


def base() -> dict:
    return {
        "description": "d",
        "model": {"name_or_path": "some/model"},
        "data": {"dataset": "some/data"},
        "output_dir": "out",
    }
