"""Whether a model or data set name means a Hub repo or a local path, and where finetune keeps its caches."""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def is_hub_id(name: str) -> bool:
    """Whether a model or data set name means a Hub repo: not a local path, not ``builtin:``."""
    # `builtin:` names never match: a Hub id has no colon.
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


def looks_like_path(name: str) -> bool:
    """Whether a model or data set name can only be a local path: a Hub id is ``name`` or ``org/name``,
    never starting with ``.``, ``/`` or ``~``, and with no second ``/`` nor backslash."""
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or (os.altsep is not None and os.altsep != "/" and os.altsep in name)
        or os.path.isabs(name)
    )


def cache_root() -> Path:
    """Where finetune keeps what it makes for later runs (converted built-in models, the
    index of decode caches): $FINETUNE_CACHE, else the Hugging Face cache's sibling folder
    (``~/.cache/finetune``)."""
    root = os.environ.get("FINETUNE_CACHE")
    if root:
        return Path(root)
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(hf_home).parent / "finetune"
