"""The README's module table names every module of the package, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_module_table_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## How it works"):]
    named = set(re.findall(r"`(finetune/[\w/]+(?:\.py|/))`", table))
    package = ROOT / "finetune"
    tree = {f"finetune/{p.name}" for p in package.glob("*.py") if p.name != "__init__.py"}
    tree |= {f"finetune/{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    modules = {n for n in named if n.endswith((".py", "/")) and not n.startswith("finetune/templates")}
    assert tree - modules == set(), f"modules missing from the README's table: {sorted(tree - modules)}"
    assert modules - tree == set(), f"the README's table names modules that do not exist: {sorted(modules - tree)}"
