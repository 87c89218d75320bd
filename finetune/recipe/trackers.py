"""The experiment trackers ``training.report_to`` may name, read from transformers' source
(no torch import, so ``finetune validate`` stays fast), and the check of a recipe's list.

Without it a misspelt tracker ("tensorbord") passes ``validate`` and stops the run at the
Trainer's start, after the data pass; the installed release's own list is the reference, so
a tracker transformers adds is accepted without a change here.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
from typing import Any

from finetune.recipe import training_block as training_fields
from finetune.utils import extras

#: Values that are not trackers: "none" turns reporting off, "all" means every installed one.
_SPECIAL = ("none", "all")


@functools.cache
def integrations() -> tuple[str, ...] | None:
    """The keys of transformers' ``INTEGRATION_TO_CALLBACK``; None when its source cannot be
    read that way (then the Trainer's own check is the only one)."""
    try:
        path = training_fields.package_dir() / "integrations" / "integration_utils.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (training_fields.SourceLayout, OSError, SyntaxError):
        return None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "INTEGRATION_TO_CALLBACK" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return None


def check(training: dict[str, Any], source: str) -> list[str]:
    """One line per tracker in ``training.report_to`` that transformers does not know, and for
    TensorBoard (finetune's ``tensorboard`` extra) when it is not installed."""
    value = training.get("report_to")
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    known = integrations()
    problems = []
    for name in names:
        if not isinstance(name, str) or name in _SPECIAL:
            continue
        if known is not None and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(known)}, or 'none'"
            problems.append(f"{source}: 'training.report_to' names '{name}', which transformers does not know; {hint}")
        elif name == "tensorboard" and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            problems.append(
                f"{source}: 'training.report_to' names 'tensorboard', which is not installed; {extras.hint('tensorboard')}"
            )
    return problems
