"""The bench scripts import each other without a circle: no script imports a module that
imports it back (bench/common.py holds what several of them share)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def bench_imports(folder: Path) -> dict[str, set[str]]:
    """Each bench script → the bench scripts it imports, at any level of the file (a
    function-level import closes a circle as surely as one at the top)."""
    scripts = {p.stem for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        graph[path.stem] = names & scripts
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once, as the path that closes it."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                loop = path[path.index(nxt):] + [nxt]
                if frozenset(loop) not in seen:
                    seen.add(frozenset(loop))
                    found.append(loop)
            else:
                walk(nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def test_no_bench_script_imports_one_that_imports_it_back() -> None:
    graph = bench_imports(BENCH)
    assert {"pipeline", "reference", "common"} <= set(graph), sorted(graph)
    loops = cycles(graph)
    assert not loops, "bench import circles: " + "; ".join(" -> ".join(loop) for loop in loops)


def test_the_circle_finder_finds_a_circle(tmp_path: Path) -> None:
    """Not vacuous: the circle bench/pipeline.py and bench/reference.py once made, planted in a
    copy, is found, function-level import and all."""
    (tmp_path / "common.py").write_text("X = 1\n")
    (tmp_path / "pipeline.py").write_text("from common import X\n\ndef f():\n    from reference import g\n")
    (tmp_path / "reference.py").write_text("import sys\nfrom pipeline import f\n")
    assert cycles(bench_imports(tmp_path)) == [["pipeline", "reference", "pipeline"]]
