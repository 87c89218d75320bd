"""Two helpers every step uses: one-line error text, and JSON files written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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
