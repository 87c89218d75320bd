"""Fixtures of the utils tests: the process umask set to 022 for a test and put back after."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def umask():
    """umask 022 for the test (a test may set another through the yielded ``os.umask``)."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)
