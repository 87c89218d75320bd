"""The manual stays equal to the code: every relative link resolves, the recipe reference lists
every key of the schema with its type and default (and no key that is gone), the module map
names every module and package of finetune/ (and nothing that is gone), and every module says
its job first and stays small."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def documents() -> list[Path]:
    """Every Markdown file whose links the tests check."""
    found = [ROOT / "README.md", ROOT / "bench" / "README.md", ROOT / "notebooks" / "README.md"]
    found += sorted(DOCS.glob("*.md")) + sorted((ROOT / "model_cards").rglob("*.md"))
    return found


# --------------------------------------------------------------------------- Markdown


FENCE = re.compile(r"^(```|~~~)")


def prose(text: str) -> str:
    """The text outside fenced code blocks (their lines blanked, so line numbers stay)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (letters,
    digits, '_', '-' and spaces kept), each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, a repeated one numbered as GitHub numbers it."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose(path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file, outside code blocks and code spans."""
    text = re.sub(r"`[^`\n]*`", "", prose(path.read_text(encoding="utf-8")))
    return LINK.findall(text)


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:: not ours to check
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}: ({target})"
        if not dest.is_relative_to(ROOT):
            problems.append(f"{where} points outside the repository")
        elif not dest.exists():
            problems.append(f"{where}: no such file or folder")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading of {dest.relative_to(ROOT)} has the anchor #{anchor}")
        elif anchor and dest.is_dir():
            problems.append(f"{where}: a folder has no anchors")
    return problems


def test_every_relative_link_resolves() -> None:
    problems = [p for doc in documents() for p in broken_links(doc)]
    assert not problems, "\n".join(problems)


def test_the_link_check_finds_a_broken_file_and_a_broken_anchor(tmp_path: Path, monkeypatch) -> None:
    """Not vacuous: a missing file, a missing heading and a code span are told apart."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "b.md").write_text("# The `x.py` file: what, why?\n\n## Twice\n\n## Twice\n")
    a = tmp_path / "a.md"
    a.write_text(
        "[ok](b.md#the-xpy-file-what-why) [ok](b.md#twice-1) [ok](#here) `[skip](nothing.md)`\n"
        "# Here\n[gone](missing.md) [bad](b.md#nope)\n```\n[fenced](nothing.md)\n```\n"
    )
    problems = broken_links(a)
    assert len(problems) == 2 and "missing.md" in problems[0] and "#nope" in problems[1], problems


def test_paths_named_in_the_docs_exist() -> None:
    """A file or folder of the repository named in code (`finetune/...`, `bench/...`) exists:
    after a move, a stale path in the prose fails here, not in a reader's hands."""
    pattern = re.compile(r"`((?:finetune|bench|recipes|notebooks|model_cards|docs)/[\w./-]*)`")
    problems = []
    for doc in documents():
        for name in pattern.findall(prose(doc.read_text(encoding="utf-8"))):
            if not (ROOT / name).exists():
                problems.append(f"{doc.relative_to(ROOT)}: `{name}` does not exist")
    assert not problems, "\n".join(problems)


def tables(path: Path) -> dict[tuple[str, ...], list[list[str]]]:
    """Each table of a Markdown file, by its header: its rows as lists of cells."""
    found: dict[tuple[str, ...], list[list[str]]] = {}
    lines = prose(path.read_text(encoding="utf-8")).splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1]) and (i == 0 or not lines[i - 1].startswith("|")):
            header = tuple(c.strip() for c in line.strip().strip("|").split("|"))
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))])
            found.setdefault(header, []).extend(rows)
    return found


# ----------------------------------------------------------------- the recipe reference

REFERENCE = DOCS / "recipes.md"
KEY_TABLE = ("key", "type", "default", "what it does")


def json_type(tp: Any) -> str:
    """A schema annotation as the reference writes it, in JSON's words."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        text = " or ".join(json_type(a) for a in args if a is not type(None))
        return text + (" or null" if type(None) in args else "")
    if origin is Literal:
        return ", ".join(f"`{json.dumps(v)}`" for v in typing.get_args(tp))
    if origin is list:
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        return {str: "list of strings", float: "list of numbers", int: "list of integers"}.get(inner, "list")
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "object"
    return {str: "string", int: "integer", float: "number", bool: "true/false", Any: "anything"}[tp]


def schema_keys() -> dict[str, tuple[Any, Any]]:
    """Every key of the schema's dataclasses → (annotation, default); an eval set's keys under
    ``data.eval_sets.NAME.``."""
    from finetune.recipe import Recipe

    out: dict[str, tuple[Any, Any]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[prefix + f.name] = (tp, default)
            if typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
                walk(typing.get_args(tp)[1], f"{prefix}{f.name}.NAME.")
            else:
                inner = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
                if inner:
                    walk(inner[0], f"{prefix}{f.name}.")

    walk(Recipe, "")
    return out


def documented_keys() -> dict[str, list[str]]:
    """The reference's key tables: key → its cells."""
    rows = tables(REFERENCE).get(KEY_TABLE, [])
    out = {}
    for row in rows:
        match = re.fullmatch(r"`([\w.]+)`", row[0])
        assert match, f"docs/recipes.md: a key table row must start with one `key`: {row}"
        assert match.group(1) not in out, f"docs/recipes.md lists {match.group(1)} twice"
        out[match.group(1)] = row
    return out


NO_VALUE = object()


def first_json(cell: str) -> Any:
    """The first `code` of a cell read as JSON (NO_VALUE when there is none, or not JSON)."""
    match = re.search(r"`([^`]+)`", cell)
    try:
        return json.loads(match.group(1)) if match else NO_VALUE
    except json.JSONDecodeError:
        return NO_VALUE


def test_the_reference_lists_every_recipe_key_and_no_stale_one() -> None:
    from finetune.recipe import (
        FINETUNE_TRAINING_KEYS,
        TRAINING_KEYS_ELSEWHERE,
        recipe_keys,
    )

    documented = set(documented_keys())
    # recipe_keys() names an eval set's keys without the NAME level, and lists every
    # TrainingArguments field, which the reference leaves to transformers' documentation.
    wanted = {k for k in recipe_keys() if not k.startswith("training.")} | {
        f"training.{k}" for k in FINETUNE_TRAINING_KEYS
    }
    unnamed = {k.replace(".NAME.", "."): k for k in documented}
    missing = sorted(wanted - set(unnamed))
    stale = sorted(k for plain, k in unnamed.items() if plain not in set(recipe_keys()))
    assert not missing, f"docs/recipes.md lacks these recipe keys (a row each: | `key` | type | default | what it does |): {missing}"
    assert not stale, f"docs/recipes.md documents keys the schema no longer has: {stale}"
    refused = {row[0].strip("`"): row[1] for row in tables(REFERENCE)[("key", "instead")]}
    assert refused == {f"training.{k}": why for k, why in TRAINING_KEYS_ELSEWHERE.items()}, (
        "docs/recipes.md's table of refused training keys must equal TRAINING_KEYS_ELSEWHERE in finetune/recipe/schema.py"
    )


def test_each_key_has_the_schemas_type_and_default() -> None:
    from finetune.recipe import FINETUNE_TRAINING_KEYS

    rows = documented_keys()
    problems = []
    for key, (tp, default) in schema_keys().items():
        if key not in rows:  # the test above names it
            continue
        _, type_cell, default_cell, what = rows[key]
        if type_cell != json_type(tp):
            problems.append(f"{key}: type is written {type_cell!r}, the schema says {json_type(tp)!r}")
        if default == "":
            ok = default_cell == "required"
            expected = "required"
        elif dataclasses.is_dataclass(default) or default == {}:
            ok, expected = default_cell == "`{}`", "`{}`"
        else:
            ok, expected = first_json(default_cell) == default, f"`{json.dumps(default)}`"
        if not ok:
            problems.append(f"{key}: default is written {default_cell!r}, the schema's is {expected}")
        if not what:
            problems.append(f"{key}: say what it does")
    for name, tp in FINETUNE_TRAINING_KEYS.items():
        cell = rows.get(f"training.{name}", ["", ""])[1]
        if cell != json_type(tp):
            problems.append(f"training.{name}: type is written {cell!r}, FINETUNE_TRAINING_KEYS says {json_type(tp)!r}")
    assert not problems, "docs/recipes.md:\n" + "\n".join(problems)


def test_required_means_the_recipe_is_refused_without_it() -> None:
    """The reference's "required" is what the checks say: each such key, left empty, is one
    line of the recipe's error."""
    from finetune.recipe import RecipeError, read_recipe, recipe_from_dict

    required = [k for k, row in documented_keys().items() if row[2] == "required"]
    assert len(required) >= 4, required
    for key in required:
        raw = read_recipe(ROOT / "recipes" / "quickstart.json")
        raw["data"]["eval_sets"] = {"x": {"dataset": "builtin:digits"}}
        node = raw
        parts = key.replace("NAME", "x").split(".")
        for part in parts[:-1]:
            node = node[part]
        node.pop(parts[-1], None)
        with pytest.raises(RecipeError) as err:
            recipe_from_dict(raw)
        assert f"'{'.'.join(parts)}' is required" in str(err.value), str(err.value)


def test_the_example_recipe_validates_and_shows_every_section_key() -> None:
    """The reference's example recipe is a valid recipe that writes out every key of the model,
    data, augment and hub sections (an eval set's and a study's keys have their own tables)."""
    from finetune.recipe import recipe_from_dict

    block = re.search(r"```json\n(.*?)```", REFERENCE.read_text(encoding="utf-8"), re.DOTALL)
    example = json.loads(block.group(1))
    recipe_from_dict(example, "docs/recipes.md")

    def keys(node: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in node.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k not in ("training", "eval_sets", "grid"):
                out |= keys(v, f"{prefix}{k}.")
        return out

    wanted = {k for k in schema_keys() if k.split(".")[0] in ("model", "data", "hub") and ".NAME." not in k}
    assert not wanted - keys(example), f"docs/recipes.md's example recipe lacks {sorted(wanted - keys(example))}"


def finetune_training_defaults() -> dict[str, Any]:
    """finetune's defaults for TrainingArguments fields that do not depend on the machine:
    those the recipe's checks read, and the constants of ``training_arguments``' defaults."""
    from finetune.recipe import training_block

    source = (ROOT / "finetune" / "training" / "arguments.py").read_text(encoding="utf-8")
    constants: dict[str, Any] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == "training_arguments":
            for stmt in ast.walk(node):
                target = getattr(stmt, "target", None) or (getattr(stmt, "targets", None) or [None])[0]
                if getattr(target, "id", None) == "defaults" and isinstance(stmt.value, ast.Dict):
                    constants = {
                        ast.literal_eval(k): ast.literal_eval(v)
                        for k, v in zip(stmt.value.keys, stmt.value.values)
                        if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
                    }
    assert constants, "finetune/training/arguments.py: training_arguments() no longer has a `defaults` dict; update this test"
    return {**training_block.strategy_defaults(has_validation=True), **constants}


def test_finetunes_training_defaults_are_the_codes() -> None:
    rows = tables(REFERENCE)[("key", "default", "why")]
    documented = {row[0].strip("`").removeprefix("training."): first_json(row[1]) for row in rows}
    assert documented == finetune_training_defaults(), "docs/recipes.md's table of finetune's training defaults"


def test_every_shipped_recipe_is_in_the_reference() -> None:
    shipped = {f"recipes/{p.name}" for p in (ROOT / "recipes").glob("*.json")}
    listed = {row[0].strip("`") for row in tables(REFERENCE)[("recipe", "what", "expected")]}
    assert listed == shipped, f"docs/recipes.md's shipped recipes: missing {sorted(shipped - listed)}, gone {sorted(listed - shipped)}"


# ----------------------------------------------------------------------- the module map

MAP = DOCS / "architecture.md"


def tree() -> set[str]:
    """Every module (a .py file other than a package's __init__.py) and package of finetune/."""
    package = ROOT / "finetune"
    names = {f"finetune/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    names = {n for n in names if not n.endswith("/__init__.py")} | {"finetune/__init__.py"}
    names |= {f"finetune/{p.parent.relative_to(package).as_posix()}/" for p in package.rglob("__init__.py") if p.parent != package}
    return names


def test_the_module_map_equals_the_tree() -> None:
    named = set(re.findall(r"`(finetune/[\w/]+(?:\.py|/))`", MAP.read_text(encoding="utf-8")))
    missing, gone = tree() - named, {n for n in named if not (ROOT / n).exists()}
    assert not missing, f"docs/architecture.md does not name these modules or packages (a row each, with its job): {sorted(missing)}"
    assert not gone, f"docs/architecture.md names modules or packages that do not exist: {sorted(gone)}"


def test_each_package_line_is_its_docstrings_first_sentence() -> None:
    text = MAP.read_text(encoding="utf-8")
    problems = []
    for init in sorted((ROOT / "finetune").glob("*/__init__.py")):
        first = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))).splitlines()[0]
        line = f"`finetune/{init.parent.name}/`: {first}"
        if line not in text:
            problems.append(line)
    assert not problems, "docs/architecture.md should carry each package's line as its __init__.py says it:\n" + "\n".join(problems)


def test_the_layer_diagram_is_the_declared_one() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; pyproject.toml allows 3.10
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    blocks = re.findall(r"```\n(.*?)```", MAP.read_text(encoding="utf-8"), re.DOTALL)
    assert any(block.splitlines() == layers for block in blocks), (
        "docs/architecture.md's layer diagram must list pyproject.toml's layers, one a line:\n" + "\n".join(layers)
    )


def test_every_module_says_its_job_first_and_stays_small() -> None:
    """The house rule that keeps each module one job: a docstring that opens the file, and no
    more than about 450 lines (past that, a module usually holds two jobs)."""
    problems = []
    for path in sorted((ROOT / "finetune").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT)
        if not ast.get_docstring(ast.parse(text)):
            problems.append(f"{name}: no docstring saying what the module does")
        if len(text.splitlines()) > 450:
            problems.append(f"{name}: {len(text.splitlines())} lines (> 450); split it by job")
    assert not problems, "\n".join(problems)
