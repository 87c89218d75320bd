"""The package's comments and docstrings say why in words: no benchmark figures, no file names.

A figure in a comment has no date, no machine and no command to rerun, and it goes on being
read long after the code it justified changed: figures live, dated, in bench/README.md and
the docs. A file name in a comment goes stale when modules move: a comment points to a
module or a function by its dotted name (``finetune.training.output_dir``) or in words, and
every such ``finetune.…`` name must still exist.

Every ``finetune/**/*.py`` is read as text: its comments through ``tokenize``, its
docstrings (and any other string standing alone as a statement) through ``ast``.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "finetune"

#: A Python file name (``train.py``, ``finetune/probe/head.py``) or a path into the tests.
FILE_NAME = re.compile(r"[\w./-]*\w\.py\b|\btests/[\w./-]*")

#: A measurement: a time, a rate or a size of a measured run, a speed-up, an accuracy in
#: percent, and the words that introduce one.
FIGURE = re.compile(
    r"""
      \d(?:[\d,.]*\d)?\ ?(?:s|ms|µs|images/s|MB|GB)\b   # 0.45 s, 15 ms, 30 µs, 368 images/s, 38 MB
    | \d(?:\.\d+)?\ ?[×x](?![\w(])                       # 1.82×, 13.3x (not 3×H×W, 224×224)
    | \d+\.\d+\ ?%                                        # 98.89%
    | \d+\ ?%\ (?:faster|slower)                          # 20% faster
    | (?i:\bmeasured\b|\b2-core\b|\b2\ cores\b)
    """,
    re.VERBOSE,
)

#: What looks like a figure or a file name but stays: data the program uses and facts of the
#: design, not measurements. Each phrase is taken out of the text before it is checked.
ALLOWED = {
    # The documented command: `accelerate launch finetune/run.py --recipe R.json`.
    "finetune/run.py": "the entry point users launch",
    # 64 × 3 × 224 × 224 float32 values: arithmetic, compared with glibc's mmap threshold.
    "(38 MB)": "the size of one float batch",
    # torchrun's own timeout (torch.distributed.elastic) for workers after a signal.
    "more than 30 s to stop": "the launcher's timeout",
}


#: A dotted name inside the package: ``finetune.training.output_dir.claim_output_dir``.
DOTTED = re.compile(r"\bfinetune(?:\.\w+)+")


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and every standalone string (docstrings) in ``source``."""
    out = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            out.extend((node.lineno + i, line) for i, line in enumerate(node.value.value.splitlines()))
    return sorted(out)


def offences(source: str, pattern: re.Pattern[str]) -> list[tuple[int, str, str]]:
    """(line, what matched, the line) for each match of ``pattern`` outside :data:`ALLOWED`."""
    found = []
    for line, text in prose(source):
        checked = text
        for phrase in ALLOWED:
            checked = checked.replace(phrase, " ")
        found.extend((line, m.group(0), text.strip()) for m in pattern.finditer(checked))
    return found


def report(pattern: re.Pattern[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: {match!r} in: {text}"
        for path in package_files()
        for line, match, text in offences(path.read_text(encoding="utf-8"), pattern)
    ]


def _defines(tree: ast.Module, names: list[str]) -> bool:
    """Whether ``names`` (an attribute path) is defined in ``tree``: a def, class, assignment or
    import at module level, then inside that class, and so on."""
    scope: list[ast.stmt] = tree.body
    for name in names:
        found = None
        for node in scope:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                bound = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bound = [a.asname or a.name.split(".")[0] for a in node.names]
            else:
                continue
            if name in bound:
                found = node
        if found is None:
            return False
        scope = getattr(found, "body", [])
    return True


def resolves(dotted: str) -> bool:
    """Whether ``finetune.a.b.c`` names a module of the package, or something defined in one,
    read from the source (nothing is imported)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        for module in (base.with_suffix(".py"), base / "__init__.py"):
            if module.is_file():
                return _defines(ast.parse(module.read_text(encoding="utf-8")), parts[i:])
    return False


def test_the_package_is_read() -> None:
    files = package_files()
    assert PACKAGE / "run.py" in files and len(files) > 50


def test_no_file_names_in_comments_or_docstrings() -> None:
    found = report(FILE_NAME)
    assert not found, (
        "Comments and docstrings name a module by its dotted name (finetune.recipe.checks) or in "
        "words, not by file:\n" + "\n".join(found)
    )


def test_no_figures_in_comments_or_docstrings() -> None:
    found = report(FIGURE)
    assert not found, (
        "Measured figures go, dated, into bench/README.md ('Figures behind design choices in the "
        "code'); the comment keeps the reason in words:\n" + "\n".join(found)
    )


def test_dotted_names_in_comments_and_docstrings_exist() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name} in: {text.strip()}"
        for path in package_files()
        for line, text in prose(path.read_text(encoding="utf-8"))
        for name in (m.group(0).rstrip(".") for m in DOTTED.finditer(text))
        if not resolves(name)
    ]
    assert not found, "Comments and docstrings name modules and functions that no longer exist:\n" + "\n".join(found)


def test_dotted_names_are_resolved() -> None:
    assert resolves("finetune.training.output_dir.claim_output_dir")
    assert resolves("finetune.probe.features.HeadModel.forward")
    assert resolves("finetune.probe")
    assert not resolves("finetune.train")
    assert not resolves("finetune.training.train._finish")


@pytest.mark.parametrize(
    "source",
    [
        "# see train.py for why\n",
        "# tests/test_features.py checks it\n",
        '"""Loads (finetune/probe/head.py)."""\n',
        "def f():\n    '''Export took 9 s.'''\n",
        "# 0.45 s for 50,000 labels, against 4 ms\n",
        "# 368 images/s\n",
        "# about 1.5× faster\n",
        "# 13.3x faster\n",
        "# accuracy 98.89% → 91.11%\n",
        "# about 20% faster\n",
        "# Measured on the busy machine\n",
        "# slower on a 2-core machine\n",
        "# a 38 MB buffer\n",
    ],
)
def test_the_patterns_catch(source: str) -> None:
    assert offences(source, FILE_NAME) + offences(source, FIGURE)


@pytest.mark.parametrize(
    "source",
    [
        "# `accelerate launch finetune/run.py --recipe R.json`\n",
        "# uint8 3×H×W, resized to 224×224 px from 32×32\n",
        "# from 1,000 images; protobuf's 2 GiB limit; eval_report.json, recipes/, templates/model_card.md\n",
        "# a float batch at 224 px (38 MB) is above glibc's threshold\n",
        "# the dotted name finetune.training.output_dir.claim_output_dir\n",
        "x = 1  # 1 − s^(−2/3), 74% of the average\n",
    ],
)
def test_the_patterns_let_pass(source: str) -> None:
    assert not offences(source, FILE_NAME) + offences(source, FIGURE)
