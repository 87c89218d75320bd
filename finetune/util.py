"""Small helpers the steps share: one-line error text, atomic JSON files, Hub ids, option types."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

from .builtin import is_builtin

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors are often paragraphs);
    the exception's type when it has no message. Keeps user errors to one line."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def write_json(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so a crash never leaves it half-written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def is_hub_id(name: str) -> bool:
    """Whether a model or data set name means a Hub repo: not a local path, not ``builtin:``."""
    return bool(_HUB_ID.match(name)) and not Path(name).exists() and not is_builtin(name)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value
