"""The grammar of a recipe's ``search`` block: one dimension per recipe key, and what optuna samples for it.

A dimension is one of::

    {"log_uniform": [low, high]}                a float, sampled on a log scale (0 < low < high)
    {"uniform": [low, high], "step": s}         a float (step optional: a grid of low + k·s)
    {"int": [low, high], "step": s, "log": b}   an integer (step and log optional, not both)
    {"choice": [v1, v2, ...]}                   one of the values (any JSON values)

This module knows nothing about recipes: :mod:`finetune.recipe.load` checks the key names
and builds a recipe with each value this module lists as a candidate
(``Dimension.candidates``), so a value the key does not accept is refused before any
training time is spent. optuna is imported only when a search samples
(``Dimension.distribution``), so checking a recipe stays fast.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

KINDS = ("log_uniform", "uniform", "int", "choice")
_OPTIONS = {"log_uniform": (), "uniform": ("step",), "int": ("step", "log"), "choice": ()}


class SpaceError(ValueError):
    """A malformed dimension; ``unknown`` names a misspelt key and ``choices`` what it may be."""

    def __init__(self, message: str, unknown: str | None = None, choices: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.unknown, self.choices = unknown, choices


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _scalar(value: Any) -> bool:
    # What optuna's CategoricalDistribution stores as it is; other JSON values go as JSON text.
    return value is None or isinstance(value, (bool, int, float, str))


@dataclass(frozen=True)
class Dimension:
    """One searched key: its kind, its bounds or values, and the options of its kind."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def candidates(self) -> list[Any]:
        """Values to check against the key's schema: every choice, or both ends of a range
        (as the type optuna samples: floats for float ranges, so that an integer key given
        a float range is refused)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def describe(self) -> str:
        """The dimension in words, for the log and the model card."""
        if self.kind == "choice":
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        scale = " (log scale)" if self.log or self.kind == "log_uniform" else ""
        step = f", step {self.step:g}" if self.step is not None else ""
        what = "integer" if self.kind == "int" else "number"
        return f"{what} in [{self.low:g}, {self.high:g}]{step}{scale}"

    def grid(self) -> list[Any] | None:
        """Every value, for the grid sampler; None for a continuous range."""
        if self.kind == "choice":
            return [self._encode(c) for c in self.choices]
        step = self.step if self.step is not None else (1 if self.kind == "int" else None)
        if step is None:
            return None
        count = int(round((self.high - self.low) / step)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else [float(v) for v in values]

    # optuna's view -----------------------------------------------------------------

    @property
    def _as_text(self) -> bool:
        return not all(_scalar(c) for c in self.choices)

    def _encode(self, value: Any) -> Any:
        return json.dumps(value) if self.kind == "choice" and self._as_text else value

    def decode(self, value: Any) -> Any:
        """The recipe value of what optuna sampled (choices that are lists or objects travel as JSON text)."""
        return json.loads(value) if self.kind == "choice" and self._as_text else value

    def distribution(self):
        """The optuna distribution of this dimension."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution([self._encode(c) for c in self.choices])
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.kind == "log_uniform", step=self.step)


def parse(key: str, spec: Any) -> Dimension:
    """The dimension a ``search`` entry describes; SpaceError (one line, with the fix) when malformed."""
    example = 'e.g. {"log_uniform": [1e-5, 1e-2]}, {"uniform": [0, 0.3]}, {"int": [3, 20]} or {"choice": [32, 64]}'
    if not isinstance(spec, dict):
        raise SpaceError(f"must be an object naming one kind of range, {example}; got {json.dumps(spec)}")
    kinds = [k for k in spec if k in KINDS]
    if len(kinds) != 1:
        unknown = next((k for k in spec if k not in KINDS and k not in ("step", "log")), None)
        if unknown is not None and not kinds:
            raise SpaceError(f"unknown kind '{unknown}'", unknown, KINDS)
        raise SpaceError(f"name exactly one of {', '.join(KINDS)}, {example}; got {json.dumps(spec)}")
    kind = kinds[0]
    allowed = _OPTIONS[kind]
    for option in spec:
        if option != kind and option not in allowed:
            hint = f"; '{kind}' takes {', '.join(allowed)}" if allowed else f"; '{kind}' takes no options"
            raise SpaceError(f"unknown option '{option}'{hint}", option if allowed else None, allowed)
    value = spec[kind]
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise SpaceError(f"'choice' must list one or more values, got {json.dumps(value)}")
        texts = [json.dumps(v, sort_keys=True) for v in value]
        if len(set(texts)) != len(texts):
            raise SpaceError(f"'choice' lists a value twice: {json.dumps(value)}")
        return Dimension(key, kind, choices=tuple(value))
    if not (isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value)):
        raise SpaceError(f"'{kind}' must be [low, high] (two numbers), got {json.dumps(value)}")
    low, high = value
    if not low < high:
        raise SpaceError(f"'{kind}' needs low < high, got {json.dumps(value)}; for a single value set the key itself")
    step, log = spec.get("step"), spec.get("log", False)
    if kind == "log_uniform" and low <= 0:
        raise SpaceError(f"'log_uniform' needs low > 0, got {json.dumps(value)}; use 'uniform' to include 0 or below")
    if kind == "int":
        if not all(isinstance(v, int) for v in value):
            raise SpaceError(f"'int' bounds must be integers, got {json.dumps(value)}; use 'uniform' for numbers")
        if step is not None and not (isinstance(step, int) and not isinstance(step, bool) and step >= 1):
            raise SpaceError(f"'step' of 'int' must be an integer >= 1, got {json.dumps(step)}")
        if not isinstance(log, bool):
            raise SpaceError(f"'log' must be true or false, got {json.dumps(log)}")
        if log and (low < 1 or (step or 1) != 1):
            raise SpaceError("'int' with 'log' needs low >= 1 and no 'step' (optuna samples integers on a log scale with step 1)")
    elif step is not None and not (_number(step) and step > 0):
        raise SpaceError(f"'step' must be a number > 0, got {json.dumps(step)}")
    if step is not None and not math.isclose((high - low) / step, round((high - low) / step), abs_tol=1e-9):
        raise SpaceError(f"'step' {step:g} does not divide [{low:g}, {high:g}] evenly; make high - low a multiple of it")
    return Dimension(key, kind, low, high, step, bool(log))
