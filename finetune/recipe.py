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
import importlib.util
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import builtin, regularisers, search_space, training_fields
from .errors import UserError
from .metric_names import KNOWN_METRICS

Strategy = Literal["full", "linear_probe", "partial", "lora", "lp_ft"]

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
    # Exponential moving average of the weights (ema.py): its decay per step (null: off), and
    # whether the decay ramps up from 0 over the first steps (timm's ModelEmaV3 warmup).
    "ema_decay": float | None,
    "ema_warmup": bool,
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


#: Distillation defaults: half the loss from the teacher, softened at T = 4 (Hinton et al.
#: 2015 used T in 1-20; T = 4 is the common choice for image classifiers, e.g. Tian et
#: al. 2020's CIFAR-100 benchmark of distillation methods).
DISTILL_ALPHA = 0.5
DISTILL_TEMPERATURE = 4.0


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
    #: The architecture only: its config is loaded and every weight initialised at random (the
    #: no-pretraining baseline that ``finetune study --scratch`` adds). Needs strategy "full".
    from_scratch: bool = False
    #: With ``strategy: lora`` (lora.py), each null for its default there: the adapters' rank
    #: (16), alpha (the rank: scale alpha/rank 1), dropout (0.1), the layers adapted (null:
    #: the attention query/key/value projections, or for CNNs every Linear and ungrouped
    #: convolution outside the head) and the variant ("lora", or "dora": weight-decomposed).
    #: Null by default so that a recipe setting one without ``strategy: lora`` is an error.
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    lora_target_modules: list[str] | None = None
    lora_variant: Literal["lora", "dora"] | None = None
    #: Knowledge distillation (distill.py): a fine-tuned classifier with the same classes (a
    #: finetune output folder, a Hub id, ``builtin:``), run frozen on each training batch;
    #: the model trains on (1 - distill_alpha) × its usual loss + distill_alpha × T² ×
    #: KL(teacher ‖ model) of the outputs softened by T = distill_temperature. null: none.
    teacher: str | None = None
    #: Weight of the distillation term, in [0, 1]; null: 0.5 (only with a teacher).
    distill_alpha: float | None = None
    #: Softening temperature T > 0; null: 4.0 (only with a teacher).
    distill_temperature: float | None = None

    @property
    def alpha(self) -> float:
        """``distill_alpha`` with its default."""
        return DISTILL_ALPHA if self.distill_alpha is None else self.distill_alpha

    @property
    def temperature(self) -> float:
        """``distill_temperature`` with its default."""
        return DISTILL_TEMPERATURE if self.distill_temperature is None else self.distill_temperature
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
    #: Mixup (Zhang et al. 2018) of whole training batches: the Beta(α, α) parameter of the
    #: mixing weight; 0: off. Targets become soft rows (data/transforms.py ``BatchMix``).
    mixup_alpha: float = 0.0
    #: CutMix (Yun et al. 2019): the Beta(α, α) parameter of the pasted box's area; 0: off.
    #: With both alphas set, each mixed batch gets one of the two, with equal chance.
    cutmix_alpha: float = 0.0
    #: The probability that a training batch is mixed at all (with mixup or CutMix on).
    mix_prob: float = 1.0

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (mixup or CutMix)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass
class EvalSetConfig:
    """An extra evaluation set (another domain), scored once at the end like the eval split."""

    dataset: str = ""
    config: str | None = None
    revision: str | None = None
    split: str = "test"
    image_column: str | None = None
    label_column: str | None = None


#: Names an eval set may have: they become metric prefixes (NAME_accuracy) and folder names
#: (eval-NAME/), so letters, digits, '-' and '_' only.
EVAL_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Prefixes the run's own files already use: eval_results.json's eval_*, train_results.json
#: and all_results.json.
_RESERVED_EVAL_SET_NAMES = {"eval", "train", "all"}


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
    #: Extra evaluation sets, NAME → where to find them; each is mapped onto the model's
    #: classes by name and scored once at the end (eval_sets.py).
    eval_sets: dict[str, EvalSetConfig] = field(default_factory=dict)
    #: "balanced": the training loss weights each class by n_images / (n_classes × its
    #: count in the train piece), as scikit-learn's compute_class_weight("balanced"). null: 1.
    class_weights: Literal["balanced"] | None = None
    #: "balanced": each training draw picks a class with equal chance, then an image of it
    #: (with replacement; seeded per epoch, balance.py). null: the Trainer's shuffled epochs.
    sampler: Literal["balanced"] | None = None


@dataclass
class HubConfig:
    push: bool = False
    repo_id: str | None = None
    private: bool = True
    revision: str | None = None


@dataclass
class StudyConfig:
    """What `finetune study` runs (study.py): every combination of the grid's values, over seeds."""

    #: Dotted recipe key → the values to try, e.g. {"data.samples_per_class": [5, 20, 100]}.
    grid: dict[str, list[Any]] = field(default_factory=dict)
    #: How many seeds each cell runs with: seed i adds i to training.seed and to the k-shot
    #: draw's training.data_seed.
    seeds: int = 1
    #: Also run every cell's architecture from random initialisation (model.from_scratch).
    scratch: bool = False


#: Keys a study grid may not vary: the study sets them for every cell itself.
STUDY_OWN_KEYS = {
    "output_dir": "each cell runs in its own folder under the recipe's output_dir",
    "training.seed": "use 'study.seeds'",
    "training.data_seed": "use 'study.seeds'",
    "model.from_scratch": "use 'study.scratch'",
}


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
    #: Read by `finetune study` only; `finetune train` trains the recipe as it is.
    study: StudyConfig | None = None
    #: The hyper-parameter search space of ``finetune search``: dotted recipe key → a range or
    #: choices (search_space.py); ``finetune train`` refuses a recipe that has one.
    search: dict[str, Any] | None = None

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
        if typing.get_origin(tp) is dict and target is not None:  # NAME → section
            if not isinstance(value, dict):
                problems.append(f"{source}: '{path}' must be a JSON object of NAME: {{...}}, got {json.dumps(value)}")
                bad.add(path)
            else:
                kwargs[key] = {n: _build(target, v, f"{path}.{n}", source, problems, bad) for n, v in value.items()}
        elif target is not None and value is not None:
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
    if m.from_scratch and m.strategy != "full":
        problems.append(
            f"{source}: 'model.from_scratch' trains a randomly initialised network, so 'model.strategy' must be "
            f"'full' (a frozen random backbone learns nothing), got '{m.strategy}'"
        )
    _check_eval_sets(d.eval_sets, source, problems)
    problems += regularisers.check(recipe, source)
    if m.strategy == "partial" and m.unfreeze_last_n < 1:
        problems.append(f"{source}: 'model.unfreeze_last_n' must be >= 1 with strategy 'partial'")
    problems += _check_lora(m, source)
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
    problems += [f"{source}: {p}" for p in _model_problems(m)]
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


def _check_eval_sets(sets: dict[str, EvalSetConfig], source: str, problems: list[str]) -> None:
    """Names that work as metric prefixes and folder names, none hiding another; a data set each."""
    folded: dict[str, str] = {}
    for name, cfg in sets.items():
        where = f"data.eval_sets.{name}"
        if not EVAL_SET_NAME.match(name):
            problems.append(
                f"{source}: '{where}': an eval set's name must be 1-64 letters, digits, '-' or '_', starting "
                "with a letter or digit (it names metrics and a folder)"
            )
        elif name.lower() in _RESERVED_EVAL_SET_NAMES:
            problems.append(
                f"{source}: '{where}': '{name}' is taken by the run's own metrics ({name.lower()}_*); name the set "
                "after its domain, e.g. 'night' or 'site-b'"
            )
        elif name.lower() in folded:
            # eval-Night/ and eval-night/ are one folder on macOS and Windows.
            problems.append(f"{source}: '{where}' and 'data.eval_sets.{folded[name.lower()]}' differ only in case; rename one")
        folded.setdefault(name.lower(), name)
        if not cfg.dataset:
            problems.append(f"{source}: '{where}.dataset' is required: a Hub id, a local folder or file, or builtin:NAME")
        if not cfg.split:
            problems.append(f"{source}: '{where}.split' must name a split of the data set, e.g. 'test'")
    for a in sets:
        for b in sets:
            # Set 'a' has the metric a_f1; a set named 'a_f1' would make a_f1_accuracy next to it.
            if a != b and b.startswith(a + "_"):
                problems.append(
                    f"{source}: 'data.eval_sets': '{b}' starts with '{a}_', so its metric names would mix with those "
                    f"of '{a}' ({b}_accuracy beside {a}_f1); rename one"
                )


def _check_study(raw: dict[str, Any], study: StudyConfig, source: str, problems: list[str]) -> None:
    """The grid's keys are recipe keys and each value makes a valid recipe (the combinations
    are checked by study.py, which builds every cell before the first one runs)."""
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


#: The keys of the ``lora`` strategy.
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_variant")


def _check_lora(m: ModelConfig, source: str) -> list[str]:
    """The ``lora_*`` keys: only with ``strategy: lora``, in range, and peft installed."""
    if m.strategy != "lora":
        return [
            f"{source}: 'model.{key}' applies only with 'model.strategy' 'lora' (it is '{m.strategy}'); "
            "remove it, or set model.strategy to lora"
            for key in LORA_KEYS
            if getattr(m, key) is not None
        ]
    problems = []
    if importlib.util.find_spec("peft") is None:
        problems.append(
            f"{source}: 'model.strategy' 'lora' needs the peft library, which is not installed; install "
            "finetune's 'transfer' extra: pip install -e '.[transfer]' in the finetune folder (or pip install 'peft>=0.21')"
        )
    if m.lora_rank is not None and m.lora_rank < 1:
        problems.append(f"{source}: 'model.lora_rank' must be >= 1 (e.g. 8 or 16), got {m.lora_rank}")
    if m.lora_alpha is not None and m.lora_alpha <= 0:
        problems.append(f"{source}: 'model.lora_alpha' must be > 0 (null: equal to lora_rank), got {m.lora_alpha}")
    if m.lora_dropout is not None and not 0 <= m.lora_dropout < 1:
        problems.append(f"{source}: 'model.lora_dropout' must be in [0, 1), got {m.lora_dropout}")
    targets = m.lora_target_modules
    if targets is not None and (not targets or any(not t.strip() for t in targets)):
        problems.append(
            f"{source}: 'model.lora_target_modules' must list one or more layer names (e.g. [\"q_proj\", "
            f"\"v_proj\"]), or be null for the model's default, got {json.dumps(targets)}"
        )
    return problems


def _model_problems(m: ModelConfig) -> list[str]:
    """Built-in model names, and the distillation keys (distill.py)."""
    problems = []
    for key, name in (("model.name_or_path", m.name_or_path), ("model.teacher", m.teacher)):
        if name and builtin.is_builtin(name):
            problem = builtin.model_problem(name, key)
            if problem is not None:
                problems.append(problem)
    if m.teacher is None:
        for key in ("distill_alpha", "distill_temperature"):
            if getattr(m, key) is not None:
                problems.append(f"'model.{key}' only applies with 'model.teacher'; set the teacher or remove the key")
        return problems
    if not m.teacher:
        problems.append("'model.teacher' is empty; name a fine-tuned classifier (an output folder or a Hub id), or null")
    if not 0 <= m.alpha <= 1:
        problems.append(f"'model.distill_alpha' weighs the teacher's term: use a number in [0, 1], got {m.alpha}")
    if not m.temperature > 0:
        problems.append(f"'model.distill_temperature' must be > 0, got {m.temperature}")
    if m.caches_features:
        problems.append(
            "'model.teacher' needs the backbone to run on every augmented batch, but a linear probe on cached "
            "features runs it once; set 'model.feature_cache' false (or strategy 'partial'), or remove the teacher"
        )
    return problems
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


def _problems(raw: dict[str, Any], source: str) -> tuple[Recipe, list[str]]:
    problems: list[str] = []
    bad: set[str] = set()
    recipe = _build(Recipe, raw, "", source, problems, bad)
    _validate(recipe, source, problems, bad)
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
    "metrics": "it changes the score trials are compared by",
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
    return keys + sorted(f"training.{k}" for k in names - set(_TRAINING_KEYS_ELSEWHERE))


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
                else _suggest(key, keys)
            )
            problems.append(f"{where} is not a recipe key; {hint}")
            continue
        try:
            dimension = search_space.parse(key, spec)
        except search_space.SpaceError as err:
            hint = f"; {_suggest(err.unknown, err.choices)}" if err.unknown and err.choices else ""
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
