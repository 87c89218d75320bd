"""TrainingArguments' fields read from transformers' source (no torch import), and checks of a training block."""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import importlib.util
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.recipe.task import possible_metrics

# Why not `from transformers import TrainingArguments`: that import pulls in torch, seconds
# on a small CPU, which was most of what `finetune validate` and a bad recipe's error took.
# Parsing the annotations of the source of `transformers.training_args` (and of the modules
# its enums come from) with `ast` says the same in a fraction of that time; a test holds
# this reading equal to the real class.


@dataclass(frozen=True)
class Field:
    """One TrainingArguments field: its annotation, resolved to typing objects, and its default."""

    name: str
    type: Any
    #: The default when the source writes it as a literal, else dataclasses.MISSING.
    default: Any = dataclasses.MISSING


class SourceLayout(Exception):
    """transformers' source is missing or no longer has the shape this module reads."""


@functools.cache
def fields() -> dict[str, Field]:
    """The init fields of transformers.TrainingArguments by name, read once per process."""
    try:
        return _from_source()
    except Exception:
        # A zipped or compiled-only install, or a source layout this reading does not know
        # (the test of this reading says which): importing the class is slow but correct.
        return _from_import()


def _from_import() -> dict[str, Field]:
    from transformers import TrainingArguments

    out = {}
    for f in dataclasses.fields(TrainingArguments):
        if f.init:
            tp = Any if isinstance(f.type, str) else f.type  # postponed annotations
            out[f.name] = Field(f.name, tp, f.default)
    return out


def package_dir() -> Path:
    """transformers' package folder, found without importing it (:mod:`finetune.recipe.trackers`
    reads it too)."""
    # A top-level find_spec locates the package without running its __init__.
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        raise SourceLayout("transformers is not installed as a package folder")
    return Path(list(spec.submodule_search_locations)[0])


def _parse(path: Path) -> ast.Module:
    if not path.is_file():
        raise SourceLayout(f"{path} is missing")
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _from_source() -> dict[str, Field]:
    pkg = package_dir()
    tree = _parse(pkg / "training_args.py")
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainingArguments"]
    if len(classes) != 1 or classes[0].bases:
        raise SourceLayout("TrainingArguments is not one base-less class in training_args.py")
    body = classes[0].body
    if any(_declares_in_block(stmt) for stmt in body):
        raise SourceLayout("a TrainingArguments field is declared inside an if/try block")
    annotated = [s for s in body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
    used = {n.id for s in annotated for n in ast.walk(_annotation_expr(s.annotation)) if isinstance(n, ast.Name)}
    namespace = _namespace(tree, pkg, used)
    out = {}
    for stmt in annotated:
        expr = _annotation_expr(stmt.annotation)
        if _is_classvar(expr) or not _is_init(stmt.value):
            continue
        name = stmt.target.id
        out[name] = Field(name, _resolve(expr, namespace), _default(stmt.value))
    if not out:
        raise SourceLayout("no fields found in TrainingArguments")
    return out


def _declares_in_block(stmt: ast.stmt) -> bool:
    """An annotated name inside a class-level if/try/with block: a field this reading would misjudge."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.AnnAssign)):
        return False  # a method's locals are not fields
    children = [c for c in ast.iter_child_nodes(stmt) if isinstance(c, ast.stmt)]
    for handler in getattr(stmt, "handlers", ()):
        children += handler.body
    return any(isinstance(c, ast.AnnAssign) or _declares_in_block(c) for c in children)


def _annotation_expr(node: ast.expr) -> ast.expr:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        return ast.parse(node.value, mode="eval").body
    return node


def _is_classvar(expr: ast.expr) -> bool:
    head = expr.value if isinstance(expr, ast.Subscript) else expr
    name = head.attr if isinstance(head, ast.Attribute) else getattr(head, "id", "")
    return name in ("ClassVar", "InitVar")


def _field_call(value: ast.expr | None) -> ast.Call | None:
    if isinstance(value, ast.Call):
        func = value.func
        if (isinstance(func, ast.Name) and func.id == "field") or (
            isinstance(func, ast.Attribute) and func.attr == "field"
        ):
            return value
    return None


def _is_init(value: ast.expr | None) -> bool:
    call = _field_call(value)
    for kw in call.keywords if call else ():
        if kw.arg == "init":
            return not (isinstance(kw.value, ast.Constant) and kw.value.value is False)
    return True


def _default(value: ast.expr | None) -> Any:
    if value is None:
        return dataclasses.MISSING
    call = _field_call(value)
    if call is not None:
        value = next((kw.value for kw in call.keywords if kw.arg == "default"), None)
        if value is None:
            return dataclasses.MISSING
    try:
        return ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return dataclasses.MISSING  # computed in the class body (e.g. the default optimizer)


def _namespace(tree: ast.Module, pkg: Path, used: set[str]) -> dict[str, Any]:
    """Names an annotation may use: typing's, the builtins', and transformers' enums."""
    ns: dict[str, Any] = {name: getattr(typing, name) for name in typing.__all__}
    ns.update(typing=typing, str=str, int=int, float=float, bool=bool, dict=dict, list=list, tuple=tuple, type=type)
    ns.update(_enums(tree))
    for node in tree.body:
        if not (isinstance(node, ast.ImportFrom) and node.level == 1 and node.module):
            continue
        named = {alias.asname or alias.name: alias.name for alias in node.names}
        wanted = {here: there for here, there in named.items() if here in used}
        if not wanted:
            continue
        path = pkg.joinpath(*node.module.split(".")).with_suffix(".py")
        enums = _enums(_parse(path)) if path.is_file() else {}
        ns.update({here: enums[there] for here, there in wanted.items() if there in enums})
    return ns


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _enums(tree: ast.Module) -> dict[str, type[enum.Enum]]:
    """The module's top-level Enum classes, rebuilt from their literal members."""
    found: dict[str, type[enum.Enum]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {_base_name(b) for b in node.bases}
        if not (bases & {"Enum", "ExplicitEnum", "StrEnum"} or bases & set(found)):
            continue
        members = []
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                key = stmt.targets[0].id
                if key.startswith("_"):
                    continue
                try:
                    members.append((key, ast.literal_eval(stmt.value)))
                except (ValueError, TypeError, SyntaxError):
                    continue
        if members:
            mixin = str if all(isinstance(v, str) for _, v in members) else None
            found[node.name] = enum.Enum(node.name, members, type=mixin, module=__name__)
    return found


class _UnknownToAny(ast.NodeTransformer):
    """Replace names the namespace lacks (classes of other libraries) with Any."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id in self.namespace:
            return node
        return ast.copy_location(ast.Name(id="Any", ctx=ast.Load()), node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
        if isinstance(node.value, ast.Name) and node.value.id == "typing":
            return node
        return ast.copy_location(ast.Name(id="Any", ctx=ast.Load()), node)


def _resolve(expr: ast.expr, namespace: dict[str, Any]) -> Any:
    tree = ast.fix_missing_locations(ast.Expression(_UnknownToAny(namespace).visit(expr)))
    try:
        return eval(compile(tree, "<TrainingArguments annotation>", "eval"), {"__builtins__": {}}, namespace)
    except Exception:  # an annotation form this reading does not know: accept any value
        return Any


# ------------------------------------------------------------------- value checks


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: [low, high] with either end open or absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    #: Also allowed outside the range (a field's "not set" value, e.g. max_steps -1).
    unset: float | None = None
    #: What the allowed values mean, for the message.
    note: str = ""

    def holds(self, value: float) -> bool:
        if self.unset is not None and value == self.unset:
            return True
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        return f"{'<' if self.high_open else '<='} {_num(self.high)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_COUNT = Range(low=1)
_NON_NEGATIVE = Range(low=0)
_STEPS = Range(low=0, low_open=True, note="a number of steps, or a fraction in (0, 1) of the total steps")
_FRACTION = Range(low=0, high=1, high_open=True)
# numpy's seeding, which set_seed() calls, takes 0 .. 2**32 - 1.
_SEED = Range(low=0, high=2**32 - 1)

#: Values TrainingArguments accepts but torch or the Trainer rejects (or misreads) later,
#: after the data and the model have loaded.
RANGES: dict[str, Range] = {
    "learning_rate": _NON_NEGATIVE,  # torch's optimizers: "Invalid learning rate"
    "per_device_train_batch_size": _COUNT,
    "per_device_eval_batch_size": _COUNT,
    "gradient_accumulation_steps": _COUNT,
    "num_train_epochs": _NON_NEGATIVE,
    # The Trainer reads max_steps <= 0 as "not set"; only -1 (the default) says so plainly.
    "max_steps": Range(low=1, unset=-1, note="or -1 to let num_train_epochs decide"),
    # The Trainer reads 0 and below as "keep every checkpoint", which null says plainly.
    "save_total_limit": Range(low=1, note="or null to keep every checkpoint"),
    "logging_steps": _STEPS,
    "eval_steps": _STEPS,
    "save_steps": _STEPS,
    "warmup_steps": Range(low=0, note="a number of steps, or a fraction in [0, 1) of the total steps"),
    "weight_decay": _NON_NEGATIVE,
    "adam_beta1": _FRACTION,  # torch: "Invalid beta parameter"
    "adam_beta2": _FRACTION,
    "adam_epsilon": _NON_NEGATIVE,  # torch: "Invalid epsilon value"
    "max_grad_norm": _NON_NEGATIVE,  # the Trainer skips clipping silently at <= 0
    "label_smoothing_factor": _FRACTION,
    "dataloader_num_workers": _NON_NEGATIVE,
    "dataloader_prefetch_factor": _COUNT,
    "eval_accumulation_steps": _COUNT,
    "eval_delay": _NON_NEGATIVE,
    "torch_empty_cache_steps": _COUNT,
    "ddp_timeout": _COUNT,
    "seed": _SEED,
    "data_seed": _SEED,
}

#: Step counts that must be whole numbers above 1 (below 1 they are fractions of the run).
_WHOLE_ABOVE_ONE = ("logging_steps", "eval_steps", "save_steps")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_ranges(training: dict[str, Any], source: str) -> list[str]:
    """One-line problems with the numbers of a (type-checked) training block; empty when none."""
    problems = []
    for key, value in training.items():
        rule = RANGES.get(key)
        if rule is None or not _number(value):
            continue  # null, or a type problem that the type check reports
        path = f"'training.{key}'"
        if not math.isfinite(value):
            problems.append(f"{source}: {path} must be a finite number, got {value}")
        elif not rule.holds(value):
            note = f" ({rule.note})" if rule.note else ""
            problems.append(f"{source}: {path} must be {rule.text()}{note}, got {value}")
        elif key in _WHOLE_ABOVE_ONE and value > 1 and value != int(value):
            problems.append(f"{source}: {path} above 1 must be a whole number of steps, got {value}")
    epochs, max_steps = training.get("num_train_epochs"), training.get("max_steps")
    if _number(epochs) and epochs == 0 and not (_number(max_steps) and max_steps > 0):
        problems.append(
            f"{source}: 'training.num_train_epochs' is 0 and 'training.max_steps' is not set: nothing would be "
            "trained; set num_train_epochs > 0, or max_steps to the number of optimizer steps"
        )
    return problems


def strategy_defaults(has_validation: bool) -> dict[str, Any]:
    """finetune's defaults for the keys that consistency checks read
    (``finetune.training.arguments`` applies them)."""
    return {
        # Per-epoch scores on the validation piece (never on the eval split): see
        # finetune.data.splits.
        "eval_strategy": "epoch" if has_validation else "no",
        "save_strategy": "epoch",
        "logging_strategy": "steps",
        "logging_steps": 10,
    }


def check_consistency(
    training: dict[str, Any], source: str, has_validation: bool, defaults: dict[str, Any] | None = None
) -> list[str]:
    """Problems between keys that TrainingArguments would raise, found without building it;
    ``defaults``: finetune's other defaults for this recipe (early stopping's)."""
    known = {name: f.default for name, f in fields().items() if f.default is not dataclasses.MISSING}
    get = {**known, **strategy_defaults(has_validation), **(defaults or {}), **training}.get
    problems = []
    evals, saves = get("eval_strategy"), get("save_strategy")
    if evals != "no" and not has_validation:
        problems.append(
            f"{source}: 'training.eval_strategy' is '{evals}' but there is no validation piece "
            "(data.validation_fraction is 0); set data.validation_fraction > 0 or eval_strategy to 'no'"
        )
    if get("load_best_model_at_end") and saves != "best":
        if evals != saves:
            problems.append(
                f"{source}: 'training.load_best_model_at_end' needs 'training.eval_strategy' and "
                f"'training.save_strategy' to match (or save_strategy 'best'), got '{evals}' and '{saves}'"
            )
        elif evals == "steps":
            problems += _check_save_multiple(get("save_steps"), get("eval_steps") or get("logging_steps"), source)
    if get("lr_scheduler_type") in ("reduce_lr_on_plateau", "greedy") and evals == "no":
        problems.append(
            f"{source}: 'training.lr_scheduler_type' '{get('lr_scheduler_type')}' follows the validation score, "
            "so it needs 'training.eval_strategy' other than 'no'"
        )
    for a, b in (("fp16", "bf16"), ("fp16_full_eval", "bf16_full_eval")):
        if get(a) is True and get(b) is True:
            problems.append(f"{source}: 'training.{a}' and 'training.{b}' are both true; set at most one of them")
    return problems


def _check_save_multiple(save: Any, evals: Any, source: str) -> list[str]:
    # The best model is picked among saved checkpoints, so each save must follow an evaluation.
    if not (_number(save) and _number(evals)) or save <= 0 or evals <= 0:
        return []
    if save % evals == 0:
        return []
    scale = 1_000_000  # fractions of the run compare in whole millionths, as transformers does
    if (save < 1) != (evals < 1) or round(save * scale) % round(evals * scale):
        return [
            f"{source}: 'training.load_best_model_at_end' needs 'training.save_steps' ({save}) to be a multiple "
            f"of 'training.eval_steps' ({evals}), both step counts or both fractions of the run"
        ]
    return []


# ------------------------------------------------------------------- early stopping


def early_stopping_defaults() -> dict[str, Any]:
    """What early stopping needs from TrainingArguments when the recipe leaves it out
    (``finetune.training.arguments`` applies it)."""
    return {
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        # A resumed run goes on with the patience counter it had, as an uninterrupted one would.
        "restore_callback_states_from_checkpoint": True,
    }


def check_early_stopping(training: dict[str, Any], metrics: list[str], has_validation: bool, source: str) -> list[str]:
    """Problems of finetune's ``training.early_stopping_*`` keys against the rest of the recipe."""
    patience, threshold = training.get("early_stopping_patience"), training.get("early_stopping_threshold")
    if patience is None:
        if threshold is None:
            return []
        return [
            f"{source}: 'training.early_stopping_threshold' does nothing without "
            "'training.early_stopping_patience'; set the patience (e.g. 3) or remove the threshold"
        ]
    problems = []
    if _number(patience) and patience < 1:
        problems.append(f"{source}: 'training.early_stopping_patience' must be >= 1, got {patience}")
    if _number(threshold) and threshold < 0:
        problems.append(f"{source}: 'training.early_stopping_threshold' must be >= 0, got {threshold}")
    if not has_validation:
        problems.append(
            f"{source}: 'training.early_stopping_patience' stops on the validation piece's scores, but "
            "data.validation_fraction is 0; set it > 0 (e.g. 0.1) or remove the patience"
        )
    if training.get("eval_strategy") == "no":
        problems.append(
            f"{source}: 'training.early_stopping_patience' needs evaluations, but 'training.eval_strategy' "
            "is 'no'; set it to 'epoch' or remove the patience"
        )
    if training.get("load_best_model_at_end") is False:
        problems.append(
            f"{source}: 'training.early_stopping_patience' keeps the best checkpoint, which needs "
            "'training.load_best_model_at_end' true; remove that key or the patience"
        )
    return problems


def check_best_metric(training: dict[str, Any], metrics: list[str], source: str, task: str = "auto") -> list[str]:
    """``metric_for_best_model`` must be a score the run computes: the Trainer looks it up only
    after the first evaluation, and a missing one stops the run there with a KeyError. The
    default ``metrics`` follow ``data.task`` (``task``; "auto": either kind until the data says)."""
    metric, possible = training.get("metric_for_best_model"), possible_metrics(metrics, task)
    if isinstance(metric, str) and metric.removeprefix("eval_") not in ("loss", *possible):
        return [f"{source}: 'training.metric_for_best_model' is '{metric}', which the run does not compute; "
                f"use 'loss' or one of {', '.join(possible)} (the recipe's 'metrics', or their default for data.task)"]
    return []
