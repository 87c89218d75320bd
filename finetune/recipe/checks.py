"""The checks between a recipe's keys that their types alone cannot express, each problem one line naming the file, the key and the fix.

Ranges, strategies and the keys that go with them, eval sets, the evaluation block, LoRA, distillation, the
regularisers (mixup/CutMix, class imbalance, the EMA), and the training block against
TrainingArguments."""

from __future__ import annotations

import json
from typing import Any

from finetune.recipe import builtins, task
from finetune.recipe import trackers as reporting
from finetune.recipe import training_block as training_fields
from finetune.recipe.builder import check_type, describe, suggest
from finetune.recipe.schema import (
    EVAL_SET_NAME,
    FINETUNE_TRAINING_KEYS,
    LORA_KEYS,
    MAX_DECODE_WORKERS,
    MAX_IMAGE_SIZE,
    RESERVED_EVAL_SET_NAMES,
    TRAINING_KEYS_ELSEWHERE,
    DataConfig,
    EvalSetConfig,
    ModelConfig,
    Recipe,
)
from finetune.utils import extras


def validate(recipe: Recipe, source: str, problems: list[str], bad: set[str]) -> None:
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
    if d.image_size is not None and d.image_size > MAX_IMAGE_SIZE:
        problems.append(
            f"{source}: 'data.image_size' is at most {MAX_IMAGE_SIZE} (one image of {d.image_size} px would be "
            f"{3 * d.image_size**2 / 1e9:.1f} GB decoded), got {d.image_size}; use the model's own size (null) or a smaller one"
        )
    workers = d.preprocessing_num_workers
    if workers is not None and not 1 <= workers <= MAX_DECODE_WORKERS:
        problems.append(
            f"{source}: 'data.preprocessing_num_workers' must be from 1 to {MAX_DECODE_WORKERS} or null (automatic), "
            f"got {workers}"
        )
    if d.samples_per_class is not None and d.max_train_samples is not None:
        problems.append(
            f"{source}: set only one of 'data.samples_per_class' and 'data.max_train_samples'"
        )
    if not 0 < d.duplicate_threshold <= 1:
        problems.append(
            f"{source}: 'data.duplicate_threshold' is a cosine similarity: use a number in (0, 1], e.g. 0.95, "
            f"got {d.duplicate_threshold}"
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
    problems += _check_streaming(recipe, source)
    problems += _regularisers(recipe, source)
    if m.strategy == "partial" and m.unfreeze_last_n < 1:
        problems.append(f"{source}: 'model.unfreeze_last_n' must be >= 1 with strategy 'partial'")
    problems += _check_lora(m, source)
    _check_strategy_keys(recipe, source, problems)
    if m.feature_runtime != "auto":
        if not (m.caches_features or m.strategy == "lp_ft"):
            problems.append(
                f"{source}: 'model.feature_runtime' chooses what runs the cached-feature pass, which this run does "
                "not have (it needs 'model.strategy' 'linear_probe' with 'model.feature_cache' true, or 'lp_ft'); "
                "remove the key"
            )
        elif m.feature_runtime == "onnxruntime" and (absent := extras.problem("export", ("onnxruntime", "onnx"))):
            problems.append(f"{source}: 'model.feature_runtime' 'onnxruntime': {absent}; or set it to 'auto'")
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
    problems += task.check(recipe, source)  # data.task, data.label_separator, the metrics' names and kind
    problems += _check_evaluation(recipe, source)
    if recipe.hub.push and not recipe.hub.repo_id:
        problems.append(f"{source}: 'hub.push' is true but 'hub.repo_id' is missing; set it to USER/NAME")
    _check_training(recipe.training, source, problems)
    problems += training_fields.check_ranges(recipe.training, source)
    problems += reporting.check(recipe.training, source)
    problems += training_fields.check_best_metric(recipe.training, recipe.metrics, source, d.task)
    has_validation = d.validation_fraction > 0
    early = training_fields.check_early_stopping(recipe.training, recipe.metrics, has_validation, source)
    problems += early
    # With early stopping on, its defaults (load_best_model_at_end) join the consistency checks.
    stops_early = recipe.training.get("early_stopping_patience") is not None and not early
    implied = training_fields.early_stopping_defaults() if stops_early else {}
    problems += training_fields.check_consistency(recipe.training, source, has_validation, implied)


def _check_training(training: dict[str, Any], source: str, problems: list[str]) -> None:
    """Every key must be a TrainingArguments field (or one of finetune's own), of the field's
    type; adds a line per problem."""
    # Read from transformers' source without importing it (that would import torch: seconds).
    fields = {name: f.type for name, f in training_fields.fields().items()} | FINETUNE_TRAINING_KEYS
    for key, value in training.items():
        path = f"training.{key}"
        if key in TRAINING_KEYS_ELSEWHERE:
            problems.append(f"{source}: '{path}' is not set here; {TRAINING_KEYS_ELSEWHERE[key]}")
            continue
        if key not in fields:
            problems.append(
                f"{source}: unknown key '{path}' (not a transformers.TrainingArguments field); "
                f"{suggest(key, fields)}"
            )
            continue
        tp = fields[key]
        if isinstance(tp, str):  # postponed annotations in some releases
            tp = Any
        if not check_type(value, tp):
            problems.append(f"{source}: '{path}' must be {describe(tp)}, got {json.dumps(value)}")


def _check_evaluation(recipe: Recipe, source: str) -> list[str]:
    """The ``evaluation`` block: the interval's level and resamples, the abstention target,
    and calibration only where a validation piece can fit it."""
    e, problems = recipe.evaluation, []
    if not 0 < e.ci_level < 1:
        problems.append(f"{source}: 'evaluation.ci_level' must be in (0, 1), e.g. 0.95, got {e.ci_level}")
    if e.bootstrap_resamples < 100:
        problems.append(
            f"{source}: 'evaluation.bootstrap_resamples' must be >= 100 (fewer cannot place the interval's ends), "
            f"got {e.bootstrap_resamples}"
        )
    if not 0 < e.abstain_accuracy <= 1:
        problems.append(f"{source}: 'evaluation.abstain_accuracy' must be in (0, 1], e.g. 0.95, got {e.abstain_accuracy}")
    if e.calibrate and recipe.data.validation_fraction == 0:
        problems.append(
            f"{source}: 'evaluation.calibrate' true fits the temperature on the validation piece, which "
            "'data.validation_fraction' 0 leaves out; set data.validation_fraction > 0, or evaluation.calibrate "
            "to null (on when there is a validation piece) or false"
        )
    return problems


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
        elif name.lower() in RESERVED_EVAL_SET_NAMES:
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
    if absent := extras.problem("transfer"):
        problems.append(f"{source}: 'model.strategy' 'lora' needs the peft library: {absent}")
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
    """Built-in model names, and the distillation keys (:mod:`finetune.training.distill`)."""
    problems = []
    for key, name in (("model.name_or_path", m.name_or_path), ("model.teacher", m.teacher)):
        if name and builtins.is_builtin(name):
            problem = builtins.model_problem(name, key)
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
    """``model.layer_decay``, ``model.drop_path_rate``, ``evaluation.tta`` and the LP-FT keys
    against the strategy and the optimizer."""
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
        if m.strategy == "lora":
            # The adapters live under peft's own names, which no layer map matches: every
            # adapter would silently train at the head's rate.
            problems.append(
                f"{source}: 'model.layer_decay' scales the learning rate of the backbone's own layers, which "
                "'lora' keeps frozen (its adapters train at one rate); remove it, or use 'full', 'partial' or 'lp_ft'"
            )
        optim = str(recipe.training.get("optim", ""))
        if any(name in optim for name in ("galore", "apollo", "lomo")):
            problems.append(
                f"{source}: 'training.optim' '{optim}' builds its own parameter groups, so 'model.layer_decay' "
                "cannot apply; use e.g. adamw_torch or sgd, or remove model.layer_decay"
            )
    if m.drop_path_rate is not None:
        if not 0 <= m.drop_path_rate < 1:
            problems.append(
                f"{source}: 'model.drop_path_rate' must be in [0, 1) (e.g. 0.1; null: the model's own), "
                f"got {m.drop_path_rate}"
            )
        if m.caches_features:
            problems.append(
                f"{source}: 'model.drop_path_rate' drops residual branches of the backbone in training, but the "
                "linear probe on cached features runs it once, in eval mode; set model.feature_cache false or "
                "remove drop_path_rate"
            )
    if recipe.evaluation.tta != "none" and m.caches_features:
        problems.append(
            f"{source}: 'evaluation.tta' '{recipe.evaluation.tta}' scores every view with the whole model, but the "
            "linear probe on cached features scores the cached single-view features; set model.feature_cache "
            f"false, or score the saved model with `finetune eval OUTPUT_DIR --tta {recipe.evaluation.tta}`"
        )
    if m.strategy == "lp_ft":
        if not m.feature_cache:
            problems.append(
                f"{source}: 'model.strategy' 'lp_ft' fits its linear probe on cached features (the fine-tune "
                "phase then augments); remove 'model.feature_cache' false"
            )
        if m.probe_solver == "trainer" and not m.lp_epochs > 0:
            problems.append(f"{source}: 'model.lp_epochs' must be > 0, got {m.lp_epochs}")


def needs_decode_cache(recipe: Recipe) -> list[str]:
    """What in the recipe only the decode-cache path does (each one line: the key and why),
    so ``data.streaming`` "auto" keeps the cache and true is refused."""
    d, m = recipe.data, recipe.model
    out = []
    if builtins.is_builtin(d.dataset):
        out.append(f"'data.dataset' '{d.dataset}' is a small built-in set held in memory")
    if m.caches_features or m.strategy == "lp_ft":
        out.append(f"'model.strategy' '{m.strategy}' fits a linear probe on features of the decoded splits")
    for key in ("samples_per_class", "max_train_samples", "max_eval_samples"):
        if getattr(d, key) is not None:
            out.append(f"'data.{key}' draws a class-balanced subset, which needs every label before training")
    if d.class_weights is not None:
        out.append("'data.class_weights' counts the training images of each class before training")
    if d.sampler is not None:
        out.append("'data.sampler' draws images by class from the whole split at random")
    if d.task == "multi_label":
        out.append("'data.task' 'multi_label': the streaming path reads one class per image (docs/data.md)")
    if d.leaked_eval == "drop":
        out.append("'data.leaked_eval' 'drop' compares every eval image with every training image, decoded, before training")
    if recipe.training.get("dataloader_persistent_workers"):
        out.append("'training.dataloader_persistent_workers' keeps loader workers, which would keep the first epoch's order")
    return out


def _check_streaming(recipe: Recipe, source: str) -> list[str]:
    d = recipe.data
    problems = []
    if d.shuffle_buffer < 1:
        problems.append(f"{source}: 'data.shuffle_buffer' must be >= 1 (images shuffled together), got {d.shuffle_buffer}")
    if d.streaming is True:
        problems += [
            f"{source}: 'data.streaming' true, but {why}; set data.streaming to false or 'auto'"
            for why in needs_decode_cache(recipe)
        ]
    elif d.streaming is False and d.shuffle_buffer != DataConfig().shuffle_buffer:
        problems.append(
            f"{source}: 'data.shuffle_buffer' shuffles streamed images, but 'data.streaming' is false; "
            "remove it, or set data.streaming to true or 'auto'"
        )
    return problems


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text.lower())


def _regularisers(recipe: Recipe, source: str) -> list[str]:
    """One-line problems of the regularising keys (mixup/CutMix, class imbalance, the EMA of
    the weights), against each other and the rest of the recipe; empty when none."""
    problems: list[str] = []
    d, a, t = recipe.data, recipe.data.augment, recipe.training
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(a, key) < 0:
            problems.append(f"{source}: 'data.augment.{key}' must be >= 0 (0 turns it off), got {getattr(a, key)}")
    if not 0 <= a.mix_prob <= 1:
        problems.append(f"{source}: 'data.augment.mix_prob' is a probability: use a number in [0, 1], got {a.mix_prob}")
    elif a.mix_prob != 1 and not a.mixes:
        problems.append(
            f"{source}: 'data.augment.mix_prob' does nothing without 'data.augment.mixup_alpha' or "
            "'data.augment.cutmix_alpha' > 0; set one (e.g. mixup_alpha 0.2) or remove mix_prob"
        )
    if d.class_weights is not None and d.sampler is not None:
        problems.append(
            f"{source}: 'data.class_weights' and 'data.sampler' both correct the class imbalance, and together "
            "over-weight the rare classes; set only one of them"
        )
    if d.sampler is not None and t.get("train_sampling_strategy") not in (None, "random"):
        problems.append(
            f"{source}: 'data.sampler' '{d.sampler}' replaces the Trainer's sampler, so "
            "'training.train_sampling_strategy' cannot be set too; remove one of them"
        )
    ema = t.get("ema_decay")
    if isinstance(ema, (int, float)) and not isinstance(ema, bool) and not 0 < ema < 1:
        problems.append(f"{source}: 'training.ema_decay' must be in (0, 1), e.g. 0.999 (null: off), got {ema}")
    if ema is None and "ema_warmup" in t:
        problems.append(f"{source}: 'training.ema_warmup' does nothing without 'training.ema_decay'; set it or remove ema_warmup")
    if ema is not None and (t.get("fsdp") or t.get("deepspeed")):
        problems.append(
            f"{source}: 'training.ema_decay' keeps a full copy of the weights on each process, which FSDP and "
            "DeepSpeed shard; remove ema_decay or run with DDP"
        )
    if ema is not None and recipe.model.strategy == "lora":
        # Its checkpoints hold the adapters alone; an average of the whole model would put a
        # full copy of the frozen weights in each of them.
        problems.append(
            f"{source}: 'training.ema_decay' is not available with 'model.strategy' 'lora' (its checkpoints hold "
            "the adapters alone, an average would add the whole model to each); remove ema_decay"
        )
    if recipe.model.caches_features:
        used = [
            key for key, on in (
                ("data.augment.mixup_alpha", a.mixup_alpha > 0), ("data.augment.cutmix_alpha", a.cutmix_alpha > 0),
                ("data.class_weights", d.class_weights is not None), ("data.sampler", d.sampler is not None),
                ("training.ema_decay", ema is not None),
            ) if on
        ]
        if used:
            problems.append(
                f"{source}: {', '.join(repr(k) for k in used)} act(s) on the training of the whole model, but the "
                "linear probe trains its head on cached features; set model.feature_cache false (the backbone "
                "then runs every step) or remove them"
            )
    return problems
