"""A small file system filled up to a chosen free space (the small_disk fixture is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path


def leave_free(disk: Path, free: int) -> None:
    """Make ``disk`` have ``free`` bytes free by resizing a filler file on it."""
    import shutil

    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    filler.write_bytes(b"\0" * max(0, shutil.disk_usage(disk).free - free))
