"""The README is a README: at most 12 KB, its commands (and the manual's) parse with finetune's
own parser, and the shipped recipes it names exist, pass `finetune validate` and state in its
results table the value their `expected` claims. (The module map, once the README's table,
is docs/architecture.md now: tests/repo/test_docs.py keeps it equal to the tree.)"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: GitHub shows a README whole, and PyPI makes it the project page: the manual is docs/.
MAX_BYTES = 12_288


def test_the_readme_is_at_most_12_kb() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_BYTES, f"README.md is {size:,} bytes (> {MAX_BYTES:,}); move the detail into docs/ and link it"


def code_lines(path: Path) -> list[str]:
    """The lines of a Markdown file's shell code blocks (```bash, ```sh, ```shell),
    continuation lines joined; other blocks hold output, JSON or Python."""
    lines, fenced, shell, held = [], False, False, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            shell = fenced and line.strip().removeprefix("```") in ("bash", "sh", "shell")
            continue
        if shell:
            if line.rstrip().endswith("\\"):
                held += line.rstrip()[:-1] + " "
                continue
            lines.append(held + line)
            held = ""
    return lines


def finetune_argv(line: str) -> list[str] | None:
    """The arguments a code line gives finetune's parser, or None when it runs no finetune
    command: ``finetune ...``, or ``python``/``accelerate launch``/``torchrun`` of
    ``finetune/run.py``, after any ``VAR=value`` prefix; a trailing ``# comment`` dropped."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words.pop(0)
    if not words:
        return None
    if words[0] == "finetune":
        return words[1:]
    if "finetune/run.py" in words and words[0] in ("python", "accelerate", "torchrun"):
        return words[words.index("finetune/run.py") + 1:]
    return None


def documented_commands() -> list[tuple[str, list[str]]]:
    docs = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "notebooks" / "README.md", ROOT / "bench" / "README.md"]
    found = []
    for doc in docs:
        for line in code_lines(doc):
            for part in line.split("&&"):
                argv = finetune_argv(part.strip())
                if argv is not None:
                    found.append((f"{doc.relative_to(ROOT)}: {part.strip()}", argv))
    return found


def test_every_documented_command_parses_with_finetunes_parser() -> None:
    from finetune.cli.main import COMMANDS, build_parser

    commands = documented_commands()
    seen = {argv[0] if argv and argv[0] in COMMANDS else "train" for _, argv in commands}
    # The README shows every command once; the manual shows them again.
    assert seen == set(COMMANDS), f"commands without a documented example: {sorted(set(COMMANDS) - seen)}"
    parser = build_parser()
    problems = []
    for where, argv in commands:
        if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
            argv = ["train", *argv]  # as finetune.cli.main does: no command means train
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                parser.parse_args(argv)
        except SystemExit:
            problems.append(f"{where}\n    {stderr.getvalue().strip().splitlines()[-1]}")
    assert not problems, "commands the parser refuses:\n" + "\n".join(problems)


def test_the_readme_shows_each_command() -> None:
    from finetune.cli.main import COMMANDS

    shown = {argv[0] for _, argv in documented_commands() if _.startswith("README.md") and argv}
    assert set(COMMANDS) <= shown | {"train"} and "train" in shown, sorted(set(COMMANDS) - shown)


def test_the_parse_check_is_not_vacuous() -> None:
    from finetune.cli.main import build_parser

    assert finetune_argv("HF_HUB_OFFLINE=1 accelerate launch finetune/run.py --recipe r.json  # note") == ["--recipe", "r.json"]
    assert finetune_argv("pip install -e .") is None
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        build_parser().parse_args(["predict", "out", "x.jpg", "--top-k", "three"])


def named_recipes() -> list[str]:
    return sorted(set(re.findall(r"recipes/[\w/.-]+?\.json", README.read_text(encoding="utf-8"))))


def test_the_shipped_recipes_the_readme_names_exist_and_validate(capsys) -> None:
    from finetune.cli.main import main

    named = named_recipes()
    shipped = sorted(f"recipes/{p.name}" for p in (ROOT / "recipes").glob("*.json"))
    assert [n for n in named if not (ROOT / n).is_file()] == [], "README.md names recipes that do not exist"
    assert set(shipped) <= set(named), f"README.md's results table lacks shipped recipes: {sorted(set(shipped) - set(named))}"
    code = main(["validate", *(str(ROOT / n) for n in named)])
    assert code == 0, capsys.readouterr().err


def test_each_shipped_recipe_states_in_the_readme_what_it_expects() -> None:
    """Its results row gives the value of the recipe's ``expected``, so the two cannot drift."""
    from finetune.recipe import load_recipe

    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    for path in sorted((ROOT / "recipes").glob("*.json")):
        row = next((r for r in rows if f"recipes/{path.name}" in r), None)
        assert row is not None, f"README.md's results table has no row for recipes/{path.name}"
        expected = load_recipe(path).expected
        if expected is not None:
            value = f"{expected.value:g}"
            assert re.search(rf"(?<![\d.]){re.escape(value)}(?!\d)", row), f"recipes/{path.name} expects {value}; its README row says: {row}"


def test_ci_installs_and_tests_as_the_readme_says() -> None:
    """.ci/run installs the extras the README's install line names and runs its test command."""
    ci = [shlex.split(line) for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.startswith("python -m")]
    readme = [shlex.split(line, comments=True) for line in code_lines(README)]
    installs = {w[w.index("-e") + 1] for w in readme if w[:2] == ["pip", "install"] and "-e" in w}
    tests = [w[3:] for w in readme if w[:3] == ["python", "-m", "pytest"]]
    for words in ci:
        if words[2:4] == ["pip", "install"]:
            assert words[words.index("-e") + 1] in installs, f"CI installs {words[-1]}; README.md: {sorted(installs)}"
        elif words[2] == "pytest":
            assert words[3:] in tests, f"CI runs pytest {' '.join(words[3:])}; README.md's test commands: {tests}"
