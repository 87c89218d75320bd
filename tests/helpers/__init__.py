"""Helpers the tests share: plain functions and constants, imported as ``tests.helpers.NAME``.

Fixtures live in tests/conftest.py, which only pytest imports; test files import the plain
helpers from here, never from each other, so any test file can move or run alone.
"""

from __future__ import annotations

from pathlib import Path

#: The checkout under test.
ROOT = Path(__file__).resolve().parents[2]
#: The real CIFAR-10 copy some tests use when it is there (they are skipped otherwise).
CIFAR10 = ROOT.parent / "shared" / "datasets" / "cifar10"
