"""The strict builder: a recipe's JSON turned into the schema's dataclasses, with one line per unknown key or wrong type and a suggestion for a misspelt key."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import types
import typing
from typing import Any, Literal


def suggest(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else "remove it or check the spelling"


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "true/false"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp).replace("typing.", "")


def check_type(value: Any, tp: Any) -> bool:
    """True when a JSON value fits a type annotation (the subset recipes use)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):
            # `IntervalStrategy | str` in TrainingArguments still means one of the enum's values.
            return any(check_type(value, e) for e in enums)
        return any(check_type(value, arg) for arg in args)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, list) and (not args or all(check_type(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {m.value for m in tp}
    if isinstance(tp, type):
        return isinstance(value, tp)
    return False


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        return " or ".join(describe(a) for a in (enums + [a for a in args if a is type(None)] if enums else args))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return _type_name(tp)


def build(cls: type, raw: Any, where: str, source: str, problems: list[str], bad: set[str]) -> Any:
    """Build dataclass ``cls`` from ``raw`` strictly. Each unknown key or wrong type adds a
    one-line problem to ``problems`` (its path to ``bad``) and keeps the default, so that
    one pass finds every mistake."""
    if not isinstance(raw, dict):
        problems.append(f"{source}: '{where or 'recipe'}' must be a JSON object, got {raw!r}")
        bad.add(where)
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            problems.append(f"{source}: unknown key '{path}'; {suggest(key, names)}")
            continue
        tp = hints[key]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        target = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
        if typing.get_origin(tp) is dict and target is not None:  # NAME → section
            if not isinstance(value, dict):
                problems.append(f"{source}: '{path}' must be a JSON object of NAME: {{...}}, got {json.dumps(value)}")
                bad.add(path)
            else:
                kwargs[key] = {n: build(target, v, f"{path}.{n}", source, problems, bad) for n, v in value.items()}
        elif target is not None and value is not None:
            kwargs[key] = build(target, value, path, source, problems, bad)
        elif not check_type(value, tp):
            problems.append(f"{source}: '{path}' must be {describe(tp)}, got {json.dumps(value)}")
            bad.add(path)
        else:
            kwargs[key] = value
    return cls(**kwargs)
