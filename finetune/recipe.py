"""Recipes: JSON files with a strict, typed schema.

A recipe is data, not code (the torchtune / big_vision lesson): every key is declared
here with its type and default, unknown keys are errors with a "did you mean"
suggestion, and every problem is one line naming the file, the key and the fix. All the
problems of a recipe are found in one pass and raised together, one line each, before any
model or data is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import training_fields
from .errors import UserError
from .metric_names import KNOWN_METRICS

Strategy = Literal["full", "linear_probe", "partial", "lp_ft"]

# TrainingArguments fields that the recipe sets elsewhere, or that we own because the
# pipeline depends on them (see train.py for why each is fixed).
_TRAINING_KEYS_ELSEWHERE = {
    "output_dir": "use the top-level 'output_dir' key",
    "hub_model_id": "use 'hub.repo_id'",
    "push_to_hub": "use 'hub.push'",
    "hub_token": "tokens come only from the environment (HF_TOKEN) or `hf auth login`",
    "push_to_hub_token": "tokens come only from the environment (HF_TOKEN) or `hf auth login`",
    "remove_unused_columns": "finetune prepares the pixel columns itself; the key has no effect here",
    "label_names": "finetune always uses the 'labels' column",
    "batch_eval_metrics": "finetune always accumulates metrics batch by batch to bound memory",
}

#: finetune's own keys in the ``training`` block, with their types; training_fields.py checks
#: their values against the rest, and args.py keeps them out of TrainingArguments.
FINETUNE_TRAINING_KEYS: dict[str, Any] = {
    "early_stopping_patience": int,  # evaluations without improvement before training stops
    "early_stopping_threshold": float,  # the least change in the metric that counts as one
}


class RecipeError(UserError, ValueError):
    """Recipe problems: one line each, naming the file, the key and the fix."""


@dataclass
class Expected:
    """The result a recipe claims, stated up front (big_vision style) and tested by users."""

    metric: str = "accuracy"
    value: float = 0.0
    #: Free text: on what hardware / split / budget the value was measured.
    note: str | None = None


@dataclass
class ModelConfig:
    name_or_path: str = ""
    revision: str | None = None
    strategy: Strategy = "full"
    #: With ``strategy: partial``: how many of the last backbone blocks are trained.
    unfreeze_last_n: int = 2
    #: Hub code only runs when asked for AND pinned to a commit (a moving branch could change it).
    trust_remote_code: bool = False
    #: With ``strategy: linear_probe``: run the frozen backbone once and train the head on
    #: its cached features (features.py); augmentation does not apply then.
    #: false: the backbone runs every step, with augmentation.
    feature_cache: bool = True
    #: How a cached-feature linear probe fits its head: "trainer" (the recipe's optimizer,
    #: schedule and epochs) or "lbfgs": L2-regularised multinomial logistic regression by
    #: full-batch L-BFGS, the usual linear-probe protocol (CLIP, Radford et al. 2021, §3.2).
    probe_solver: Literal["trainer", "lbfgs"] = "trainer"
    #: With "lbfgs": the L2 strengths λ to try (loss = mean cross-entropy + λ/2·‖W‖²). With
    #: several, the best validation-piece accuracy wins (ties: the lower validation loss).
    probe_l2: list[float] = field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    #: With "lbfgs": the most L-BFGS iterations for each λ.
    probe_max_iter: int = 1000
    #: Channels-last memory format for the model and its input batches, which convolutions on
    #: GPUs run faster in. null: on for convolutional models (more than one Conv2d: ResNet,
    #: ConvNeXt, EfficientNet; not ViT-like models) on CUDA, without FSDP or DeepSpeed.
    channels_last: bool | None = None
    #: Layer-wise learning-rate decay, in (0, 1]: the head trains at the learning rate, each
    #: earlier block at this factor times the next one's (layer_decay.py). null: off.
    layer_decay: float | None = None
    #: With ``strategy: lp_ft`` and ``probe_solver: trainer``: the epochs of the linear-probe
    #: phase on cached features (its optimizer, learning rate and batch are ``training``'s).
    lp_epochs: float = 10.0

    @property
    def caches_features(self) -> bool:
        """A linear probe on cached features: the backbone runs once, without augmentation."""
        return self.strategy == "linear_probe" and self.feature_cache


@dataclass
class AugmentConfig:
    """Train-time augmentation, applied batch-wise with torchvision.transforms.v2."""

    #: RandomResizedCrop scale range; null turns the crop off.
    crop_scale: list[float] | None = field(default_factory=lambda: [0.5, 1.0])
    #: Horizontal flips: right for natural photos, wrong for digits or text.
    hflip: bool = True
    #: An automatic augmentation policy of torchvision, after crop and flip, on the uint8
    #: pixels: "trivial_augment" (TrivialAugmentWide, Müller & Hutter 2021), "rand_augment"
    #: (RandAugment, 2 ops at magnitude 9, Cubuk et al. 2020), "auto_augment" (AutoAugment's
    #: ImageNet policy, Cubuk et al. 2019) or "augmix" (Hendrycks et al. 2020). null: none.
    preset: Literal["trivial_augment", "rand_augment", "auto_augment", "augmix"] | None = None
    #: Probability of random erasing (Zhong et al. 2020) of a rectangle in each normalised
    #: image, as torchvision's and DeiT's recipes apply it last; 0: off.
    random_erasing: float = 0.0


@dataclass
class DataConfig:
    dataset: str = ""
    config: str | None = None
    revision: str | None = None
    train_split: str = "train"
    eval_split: str | None = "test"
    validation_fraction: float = 0.1
    image_column: str | None = None
    label_column: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    samples_per_class: int | None = None
    image_size: int | None = None
    #: Stop before training when more than this share of the images cannot be decoded.
    max_bad_fraction: float = 0.01
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: Processes for the one-off decode/resize ``datasets.map`` pass (null: automatic).
    preprocessing_num_workers: int | None = None


@dataclass
class HubConfig:
    push: bool = False
    repo_id: str | None = None
    private: bool = True
    revision: str | None = None


@dataclass
class Recipe:
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output_dir: str = ""
    expected: Expected | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: list(KNOWN_METRICS))
    hub: HubConfig = field(default_factory=HubConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- parsing


def _suggest(key: str, choices: typing.Iterable[str]) -> str:
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


def _check_type(value: Any, tp: Any) -> bool:
    """True when a JSON value fits a type annotation (the subset recipes use)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):
            # `IntervalStrategy | str` in TrainingArguments still means one of the enum's values.
            return any(_check_type(value, e) for e in enums)
        return any(_check_type(value, arg) for arg in args)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, list) and (not args or all(_check_type(v, args[0]) for v in value))
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


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        return " or ".join(_describe(a) for a in (enums + [a for a in args if a is type(None)] if enums else args))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return _type_name(tp)


def _build(cls: type, raw: Any, where: str, source: str, problems: list[str], bad: set[str]) -> Any:
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
            problems.append(f"{source}: unknown key '{path}'; {_suggest(key, names)}")
            continue
        tp = hints[key]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        target = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
        if target is not None and value is not None:
            kwargs[key] = _build(target, value, path, source, problems, bad)
        elif not _check_type(value, tp):
            problems.append(f"{source}: '{path}' must be {_describe(tp)}, got {json.dumps(value)}")
            bad.add(path)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _check_training(training: dict[str, Any], source: str, problems: list[str]) -> None:
    """Every key must be a TrainingArguments field (or one of finetune's own), of the field's
    type; adds a line per problem."""
    # Read from transformers' source without importing it (that would import torch: seconds).
    fields = {name: f.type for name, f in training_fields.fields().items()} | FINETUNE_TRAINING_KEYS
    for key, value in training.items():
        path = f"training.{key}"
        if key in _TRAINING_KEYS_ELSEWHERE:
            problems.append(f"{source}: '{path}' is not set here; {_TRAINING_KEYS_ELSEWHERE[key]}")
            continue
        if key not in fields:
            problems.append(
                f"{source}: unknown key '{path}' (not a transformers.TrainingArguments field); "
                f"{_suggest(key, fields)}"
            )
            continue
        tp = fields[key]
        if isinstance(tp, str):  # postponed annotations in some releases
            tp = Any
        if not _check_type(value, tp):
            problems.append(f"{source}: '{path}' must be {_describe(tp)}, got {json.dumps(value)}")


def _validate(recipe: Recipe, source: str, problems: list[str], bad: set[str]) -> None:
    """Checks between keys, which the types alone cannot express; adds a line per problem.

    A required key is not reported missing when its value (or its section) was already
    reported as the wrong type (its path is in ``bad``)."""
    required = {
        "description": recipe.description,
        "model.name_or_path": recipe.model.name_or_path,
        "data.dataset": recipe.data.dataset,
        "output_dir": recipe.output_dir,
    }
    for key, value in required.items():
        if not value and not ({key, key.split(".")[0]} & bad):
            problems.append(f"{source}: '{key}' is required; add it to the recipe or pass --set {key}=...")
    d, m = recipe.data, recipe.model
    if not 0 <= d.validation_fraction < 1:
        problems.append(f"{source}: 'data.validation_fraction' must be in [0, 1), got {d.validation_fraction}")
    if d.eval_split is None and d.validation_fraction == 0:
        problems.append(
            f"{source}: with 'data.eval_split' null the validation piece is what gets reported, "
            "so 'data.validation_fraction' must be > 0"
        )
    for key in ("max_train_samples", "max_eval_samples", "samples_per_class", "image_size"):
        value = getattr(d, key)
        if value is not None and value < 1:
            problems.append(f"{source}: 'data.{key}' must be a positive integer or null, got {value}")
    if d.samples_per_class is not None and d.max_train_samples is not None:
        problems.append(
            f"{source}: set only one of 'data.samples_per_class' and 'data.max_train_samples'"
        )
    if not 0 <= d.max_bad_fraction <= 1:
        problems.append(f"{source}: 'data.max_bad_fraction' must be in [0, 1], got {d.max_bad_fraction}")
    scale = d.augment.crop_scale
    if scale is not None and not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        problems.append(
            f"{source}: 'data.augment.crop_scale' must be [min, max] with 0 < min <= max <= 1, got {scale}"
        )
    if not 0 <= d.augment.random_erasing <= 1:
        problems.append(
            f"{source}: 'data.augment.random_erasing' is a probability: use a number in [0, 1], "
            f"got {d.augment.random_erasing}"
        )
    if m.strategy == "partial" and m.unfreeze_last_n < 1:
        problems.append(f"{source}: 'model.unfreeze_last_n' must be >= 1 with strategy 'partial'")
    _check_strategy_keys(recipe, source, problems)
    if m.probe_solver == "lbfgs":
        if not (m.caches_features or m.strategy == "lp_ft"):
            problems.append(
                f"{source}: 'model.probe_solver' 'lbfgs' fits the head on cached features, so it needs "
                "'model.strategy' 'linear_probe' and 'model.feature_cache' true, or 'model.strategy' 'lp_ft'"
            )
        if not m.probe_l2 or any(v < 0 for v in m.probe_l2):
            problems.append(f"{source}: 'model.probe_l2' must list one or more strengths >= 0, got {m.probe_l2}")
        if len(m.probe_l2) > 1 and (d.validation_fraction == 0 or d.eval_split is None):
            problems.append(
                f"{source}: 'model.probe_l2' lists {len(m.probe_l2)} strengths to choose from on the validation "
                "piece, which needs 'data.validation_fraction' > 0 and a separate 'data.eval_split' (the reported "
                "split must not pick them); give one value, e.g. --set model.probe_l2=[0.001]"
            )
        if m.probe_max_iter < 1:
            problems.append(f"{source}: 'model.probe_max_iter' must be >= 1, got {m.probe_max_iter}")
    if m.trust_remote_code and not (m.revision and len(m.revision) == 40 and _is_hex(m.revision)):
        problems.append(
            f"{source}: 'model.trust_remote_code' runs code from the Hub, so 'model.revision' must pin "
            "a 40-character commit hash"
        )
    for name in recipe.metrics:
        if name not in KNOWN_METRICS:
            problems.append(f"{source}: unknown metric '{name}' in 'metrics'; {_suggest(name, KNOWN_METRICS)}")
    if not recipe.metrics:
        problems.append(f"{source}: 'metrics' must list at least one of {', '.join(KNOWN_METRICS)}")
    if recipe.expected is not None and recipe.expected.metric not in recipe.metrics:
        problems.append(
            f"{source}: 'expected.metric' is '{recipe.expected.metric}' but 'metrics' does not compute it; "
            f"use one of {', '.join(recipe.metrics)}"
        )
    if recipe.hub.push and not recipe.hub.repo_id:
        problems.append(f"{source}: 'hub.push' is true but 'hub.repo_id' is missing; set it to USER/NAME")
    _check_training(recipe.training, source, problems)
    problems += training_fields.check_ranges(recipe.training, source)
    problems += training_fields.check_best_metric(recipe.training, recipe.metrics, source)
    has_validation = d.validation_fraction > 0
    early = training_fields.check_early_stopping(recipe.training, recipe.metrics, has_validation, source)
    problems += early
    # With early stopping on, its defaults (load_best_model_at_end) join the consistency checks.
    stops_early = recipe.training.get("early_stopping_patience") is not None and not early
    implied = training_fields.early_stopping_defaults() if stops_early else {}
    problems += training_fields.check_consistency(recipe.training, source, has_validation, implied)


def _check_strategy_keys(recipe: Recipe, source: str, problems: list[str]) -> None:
    """``model.layer_decay`` and the LP-FT keys against the strategy and the optimizer."""
    m = recipe.model
    if m.layer_decay is not None:
        if not 0 < m.layer_decay <= 1:
            problems.append(
                f"{source}: 'model.layer_decay' must be in (0, 1] (e.g. 0.75; 1 is no decay), got {m.layer_decay}"
            )
        if m.strategy == "linear_probe":
            problems.append(
                f"{source}: 'model.layer_decay' scales the learning rate of the backbone's layers, which "
                "'linear_probe' does not train; remove it, or use 'full', 'partial' or 'lp_ft'"
            )
        optim = str(recipe.training.get("optim", ""))
        if any(name in optim for name in ("galore", "apollo", "lomo")):
            problems.append(
                f"{source}: 'training.optim' '{optim}' builds its own parameter groups, so 'model.layer_decay' "
                "cannot apply; use e.g. adamw_torch or sgd, or remove model.layer_decay"
            )
    if m.strategy == "lp_ft":
        if not m.feature_cache:
            problems.append(
                f"{source}: 'model.strategy' 'lp_ft' fits its linear probe on cached features (the fine-tune "
                "phase then augments); remove 'model.feature_cache' false"
            )
        if m.probe_solver == "trainer" and not m.lp_epochs > 0:
            problems.append(f"{source}: 'model.lp_epochs' must be > 0, got {m.lp_epochs}")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text.lower())


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


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Build and check a recipe; every problem found is one line of a single RecipeError."""
    problems: list[str] = []
    bad: set[str] = set()
    recipe = _build(Recipe, raw, "", source, problems, bad)
    _validate(recipe, source, problems, bad)
    if problems:
        raise RecipeError("\n".join(problems))
    return recipe


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe. Raises RecipeError with a one-line message."""
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
    return recipe_from_dict(apply_overrides(raw, overrides, source), source)
