"""A recipe file read, its ``--set`` overrides applied, and every problem found in one pass, with its ``study`` and ``search`` blocks."""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path
from typing import Any

from finetune.recipe import search_space
from finetune.recipe import training_block as training_fields
from finetune.recipe.builder import build, suggest
from finetune.recipe.checks import validate
from finetune.recipe.schema import (
    FINETUNE_TRAINING_KEYS,
    STUDY_OWN_KEYS,
    TRAINING_KEYS_ELSEWHERE,
    Recipe,
    RecipeError,
    StudyConfig,
)

# ------------------------------------------------------------------------ overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=VALUE`` → (["a", "b"], value); the value is JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. training.learning_rate=3e-4")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str], source: str) -> dict[str, Any]:
    out = json.loads(json.dumps(raw))  # deep copy: the caller's dict stays as it was
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise RecipeError(f"{source}: --set {text}: '{where}' is not an object, so it has no keys")
            node = child
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- loading


def _problems(raw: dict[str, Any], source: str) -> tuple[Recipe, list[str]]:
    problems: list[str] = []
    bad: set[str] = set()
    recipe = build(Recipe, raw, "", source, problems, bad)
    validate(recipe, source, problems, bad)
    return recipe, problems


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Build and check a recipe; every problem found is one line of a single RecipeError."""
    recipe, problems = _problems(raw, source)
    if recipe.study is not None:
        _check_study(raw, recipe.study, source, problems)
    if isinstance(raw, dict) and isinstance(raw.get("search"), dict):
        problems += _search_problems(raw, source)
    if problems:
        raise RecipeError("\n".join(problems))
    return recipe


def _check_study(raw: dict[str, Any], study: StudyConfig, source: str, problems: list[str]) -> None:
    """The grid's keys are recipe keys and each value makes a valid recipe (the combinations
    are checked by ``finetune.sweeps.study.plan``, which builds every cell before the first
    one runs)."""
    if study.seeds < 1:
        problems.append(f"{source}: 'study.seeds' must be >= 1, got {study.seeds}")
    base = {k: v for k, v in raw.items() if k != "study"}
    try:
        recipe_from_dict(base, source)
        base_problems: set[str] = set()
    except RecipeError as err:
        base_problems = set(str(err).splitlines())
    for key, values in study.grid.items():
        where = f"study.grid.{key}"
        if key in STUDY_OWN_KEYS or key.split(".")[0] in ("hub", "study"):
            why = STUDY_OWN_KEYS.get(key, "a study neither publishes nor nests studies")
            problems.append(f"{source}: '{where}': a study cannot vary '{key}'; {why}")
            continue
        if not isinstance(values, list) or not values:
            problems.append(f"{source}: '{where}' must list one or more values, e.g. [5, 20, 100], got {json.dumps(values)}")
            continue
        if len({json.dumps(v, sort_keys=True) for v in values}) < len(values):
            problems.append(f"{source}: '{where}' lists a value twice: {json.dumps(values)}")
        seen: set[str] = set()
        for value in values:
            try:
                recipe_from_dict(apply_overrides(base, [f"{key}={json.dumps(value)}"], source), source)
            except RecipeError as err:
                for line in str(err).splitlines():
                    if line in base_problems or line in seen:
                        continue
                    seen.add(line)
                    detail = line[len(source) + 2:] if line.startswith(f"{source}: ") else line
                    problems.append(f"{source}: '{where}' value {json.dumps(value)}: {detail}")


# ----------------------------------------------------------------------- search block

#: Keys a search may not vary, and why: each would change what trials are compared on, or
#: is not a training setting at all.
_NOT_SEARCHABLE = {
    "search": "a search does not search its own block",
    "description": "it names the run; it does not change training",
    "output_dir": "each trial runs in its own folder, and the final run in '<output_dir>/final'",
    "hub": "publishing settings do not change what is trained",
    "expected": "the result a recipe claims is not a setting",
    "data.eval_split": "trials never read the eval split, so nothing can be tuned on it",
    "data.max_eval_samples": "trials never read the eval split, so nothing can be tuned on it",
    "data.leaked_eval": "trials never read the eval split, so nothing can be tuned on it",
    "data.duplicate_threshold": "it decides which eval images data.leaked_eval drops, and trials never read the eval split",
    "metrics": "it changes the score trials are compared by",
    "evaluation": (
        "trials are scored on the validation piece with one view and no calibration; it applies to the final "
        "scores only"
    ),
    "training.metric_for_best_model": "it changes the score trials are compared by",
    "training.greater_is_better": "it changes the score trials are compared by",
    **{
        key: "it changes the validation piece, so trials would be scored on different images"
        for key in ("data.dataset", "data.config", "data.revision", "data.train_split",
                    "data.validation_fraction", "training.seed", "training.data_seed")
    },
}


def recipe_keys() -> list[str]:
    """Every dotted key a recipe may set: the sections' fields and the training block's keys."""
    keys: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            keys.append(prefix + f.name)
            inner = [a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)]
            if inner:
                walk(inner[0], f"{prefix}{f.name}.")

    walk(Recipe, "")
    names = set(training_fields.fields()) | set(FINETUNE_TRAINING_KEYS)
    return keys + sorted(f"training.{k}" for k in names - set(TRAINING_KEYS_ELSEWHERE))


def _search_problems(raw: dict[str, Any], source: str) -> list[str]:
    """One line per bad ``search`` entry: an unknown or unsearchable key, a malformed range, or
    a value the key does not accept (found by building the recipe with it; a value is only
    refused for a clash with keys that are not searched too, since those vary per trial)."""
    space = raw["search"]
    if not space:
        return [f"{source}: 'search' lists no keys; add one (e.g. \"training.learning_rate\": "
                "{\"log_uniform\": [1e-5, 1e-2]}) or remove the block"]
    base = {k: v for k, v in raw.items() if k != "search"}
    known = set(_problems(base, source)[1])
    keys = recipe_keys()
    problems: list[str] = []
    for key, spec in space.items():
        where = f"{source}: 'search' key '{key}'"
        barred = next((k for k in _NOT_SEARCHABLE if key == k or key.startswith(k + ".")), None)
        if barred is not None:
            problems.append(f"{where} cannot be searched: {_NOT_SEARCHABLE[barred]}; remove it")
            continue
        if key not in keys:
            # Matched within its section on the last part, as the sections' own checks do:
            # the shared "training." would make every training key look close.
            section, _, name = key.rpartition(".")
            same = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == section}
            close = difflib.get_close_matches(name, list(same), n=1, cutoff=0.6) if same else []
            hint = (
                f"did you mean '{same[close[0]]}'?" if close
                else "remove it or check the spelling" if same
                else suggest(key, keys)
            )
            problems.append(f"{where} is not a recipe key; {hint}")
            continue
        try:
            dimension = search_space.parse(key, spec)
        except search_space.SpaceError as err:
            hint = f"; {suggest(err.unknown, err.choices)}" if err.unknown and err.choices else ""
            problems.append(f"{where}: {err}{hint}")
            continue
        others = [f"'{k}'" for k in space if k != key]
        for value in dimension.candidates():
            override = f"{key}={json.dumps(value)}"
            _, found = _problems(apply_overrides(base, [override], source), source)
            new = [p for p in found if p not in known and not any(o in p for o in others)]
            if new:
                reason = new[0].removeprefix(f"{source}: ")
                problems.append(f"{where}: the value {json.dumps(value)} is not one the key accepts ({reason})")
                break
    return problems


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe. Raises RecipeError with a one-line message."""
    return recipe_from_dict(apply_overrides(read_recipe(path), overrides, str(path)), str(path))


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file's JSON object, unchecked. Raises RecipeError with a one-line message."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{source}: no such recipe file; check the path (shipped recipes are in recipes/)") from None
    except OSError as err:
        raise RecipeError(f"{source}: cannot read the recipe ({err.strerror})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecipeError(f"{source}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a JSON object at the top level")
    return raw
