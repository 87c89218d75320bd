"""The README's module table names every module of the package, and nothing that is gone; each module says its job and stays small."""

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


def test_every_module_says_its_job_first_and_stays_small() -> None:
    """The house rule that keeps each module one job: a docstring that opens the file, and no
    more than about 450 lines (past that, a module usually holds two jobs)."""
    import ast

    problems = []
    for path in sorted((ROOT / "finetune").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT)
        if not ast.get_docstring(ast.parse(text)):
            problems.append(f"{name}: no docstring saying what the module does")
        if len(text.splitlines()) > 450:
            problems.append(f"{name}: {len(text.splitlines())} lines (> 450); split it by job")
    assert not problems, "\n".join(problems)
