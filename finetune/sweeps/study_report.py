"""A study's report: study.csv (one row per run), study.md (mean ± std per cell) and study.png (each metric against the grid's numeric key).

The picture puts the grid's first numeric key (``data.samples_per_class``, say) on the x axis,
on a log scale when its values span ten times or more, and draws one line per combination
of the other keys (a strategy, "from scratch"), each point the mean over seeds with the
standard deviation as error bars. A grid with no numeric key puts its first key's values on
the x axis as categories. Labels are drawn in any script (plots.class_labels' fonts).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from finetune.recipe import Recipe, StudyConfig
from finetune.recipe.metric_names import DISPLAY_NAMES, KNOWN_METRICS
from finetune.utils.files import replacing, write_text

#: The column of study.csv that says how a run's network started: "pretrained" or "scratch".
INIT = "init"


def short_key(key: str, keys: list[str]) -> str:
    """A grid key by its last part when no other key of the grid ends the same."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf if sum(k.rsplit(".", 1)[-1] == leaf for k in keys) == 1 else key


def text_of(value: Any) -> str:
    """A grid value as the report writes it: strings bare, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def cell_label(values: dict[str, Any], scratch: bool) -> str:
    """A cell without its seed: ``strategy=full, samples_per_class=5[, from scratch]``."""
    keys = list(values)
    parts = [f"{short_key(k, keys)}={text_of(v)}" for k, v in values.items()]
    if scratch:
        parts.append("from scratch")
    return ", ".join(parts) or "the recipe as it is"


def run_metrics(recipe: Recipe, rows: list[dict[str, Any]]) -> list[str]:
    """The metrics the runs computed: the recipe's, then any other known one they have (a
    multi-label run's, when its recipe left the single-label default)."""
    prefixes = ["eval", *recipe.data.eval_sets]
    names = list(recipe.metrics) + [m for m in KNOWN_METRICS if m not in recipe.metrics]
    return [m for m in names if any(f"{p}_{m}" in r for p in prefixes for r in rows)]


def metric_columns(recipe: Recipe, rows: list[dict[str, Any]]) -> list[str]:
    """The summarised numbers: the runs' metrics on the eval split, then on each eval set."""
    prefixes = ["eval", *recipe.data.eval_sets]
    names = [f"{p}_{m}" for p in prefixes for m in run_metrics(recipe, rows)]
    return [n for n in names if any(n in r for r in rows)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_key(study: StudyConfig) -> str | None:
    """The grid's first key whose values are all numbers: the x axis of study.png."""
    for key, values in study.grid.items():
        if len(values) > 1 and all(_is_number(v) for v in values):
            return key
    return None


def _stats(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (0 for one value), count) of the finite values."""
    vals = np.asarray([v for v in values if _is_number(v) and math.isfinite(v)], dtype=float)
    if not len(vals):
        return math.nan, math.nan, 0
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["cell"], []).append(row)
    return groups


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    first = [c for c in ("cell",) if c in columns]
    ordered = first + [c for c in columns if c not in first and c != "folder"] + (["folder"] if "folder" in columns else [])
    with replacing(path, binary=False) as f:
        writer = csv.DictWriter(f, fieldnames=ordered)
        writer.writeheader()
        writer.writerows(rows)


def _half_width(row: dict[str, Any], column: str) -> float | None:
    """Half the width of a run's bootstrap interval of ``column``, or None without one."""
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    return (high - low) / 2 if _is_number(low) and _is_number(high) else None


def _format(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "–"
    return f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"


def markdown(recipe: Recipe, rows: list[dict[str, Any]], total: int) -> str:
    study = recipe.study or StudyConfig()
    keys = list(study.grid)
    columns = metric_columns(recipe, rows)
    groups = _groups(rows)
    # The bootstrap interval of the first metric that has one: the eval split's own uncertainty.
    ci_column = next((c for c in columns if any(_is_number(r.get(f"{c}_ci_low")) for r in rows)), None)
    eval_images = sorted({int(r["eval_num_images"]) for r in rows if _is_number(r.get("eval_num_images"))})
    split = recipe.data.eval_split or f"validation piece of '{recipe.data.train_split}'"
    subset = " (a class-balanced subset)" if recipe.data.max_eval_samples is not None else ""
    grid = "; ".join(f"`{k}` = {', '.join(map(str, v))}" for k, v in study.grid.items()) or "none (the recipe as it is)"
    lines = [
        f"# Study: {recipe.description.splitlines()[0] if recipe.description else recipe.output_dir}",
        "",
        f"{len(rows)} of {total} run(s) finished ({total // study.seeds} cell(s) × {study.seeds} seed(s)). "
        f"Grid: {grid}.{' Plus each combination from random initialisation (`model.from_scratch`, strategy full).' if study.scratch else ''}",
        "",
        f"**A report, not a selection.** Every run is scored once on the eval split, `{split}`{subset}"
        f"{f' ({eval_images[0]} images)' if len(eval_images) == 1 else ''}. Choosing the best cell by these numbers and "
        "quoting its score would report a selected score as a test score; choose on the validation piece "
        "(`finetune search`), then score the chosen recipe once.",
        "",
        "Mean ± standard deviation over seeds: seed i adds i to `training.seed` and to `training.data_seed`, so the "
        "training's randomness and the draw of the training images both change. Macro scores average over the "
        "classes present in the evaluated set.",
        "",
        "**Which spread is which.** The ± above is the *seed spread*: how much training itself varies. It leaves "
        "out the uncertainty that comes from scoring on a finite eval split, which is the same for every seed and "
        "which each run's bootstrap interval measures (`eval_*_ci_low`/`_high` in its `eval_results.json` and "
        "`study.csv`, and its card)"
        + (f"; the last column gives that interval's mean half-width for {_column_title(ci_column, recipe)}. "
           "Two cells closer than both spreads together cannot be told apart." if ci_column else "."),
        "",
    ]
    show_init = any(r.get(INIT) == "scratch" for r in rows)
    header = [short_key(k, keys) for k in keys] + (["init"] if show_init else []) + ["runs"]
    header += [_column_title(c, recipe) for c in columns] + ["train time (s)"]
    if ci_column:
        header.append(f"{_column_title(ci_column, recipe)}: test-set CI ±")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for cell_rows in groups.values():
        first = cell_rows[0]
        cells = [str(first.get(k, "")) for k in keys] + ([str(first.get(INIT, ""))] if show_init else [])
        cells.append(str(len(cell_rows)))
        cells += [_format(*_stats([r.get(c) for r in cell_rows])) for c in columns]
        mean, _, n = _stats([r.get("train_runtime") for r in cell_rows])
        cells.append((f"{mean:.1f}" if mean < 10 else f"{mean:.0f}") if n else "–")
        if ci_column:
            half, _, n = _stats([_half_width(r, ci_column) for r in cell_rows])
            cells.append(f"±{half:.4f}" if n else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![study](study.png)", "", "Every run's numbers: `study.csv`; every run's folder (model, card, report): `runs/`.", ""]
    return "\n".join(lines)


def _column_title(column: str, recipe: Recipe) -> str:
    prefix, _, metric = column.partition("_")
    name = DISPLAY_NAMES.get(metric, metric)
    return name if prefix == "eval" else f"{name}, {prefix}"


def figure(recipe: Recipe, rows: list[dict[str, Any]]):
    """Each metric on the eval split against the grid's numeric key, a line per other setting."""
    from matplotlib.font_manager import FontProperties

    from finetune.evaluation import plots
    study = recipe.study or StudyConfig()
    keys = list(study.grid)
    x_key = numeric_key(study) or (keys[0] if keys else None)
    others = [k for k in keys if k != x_key]
    metrics = [m for m in run_metrics(recipe, rows) if any(f"eval_{m}" in r for r in rows)]
    lines: dict[str, dict[Any, list[dict[str, Any]]]] = {}
    for row in rows:
        # The values alone, under a legend titled with their keys: names short enough to show whole.
        label = ", ".join([text_of(row.get(k)) for k in others] + (["from scratch"] if row.get(INIT) == "scratch" else []))
        lines.setdefault(label or "the recipe", {}).setdefault(row.get(x_key) if x_key else "", []).append(row)
    labels = plots.class_labels(list(lines))
    font = FontProperties(family=labels.family)
    numeric = x_key is not None and x_key == numeric_key(study)
    categories = list(study.grid[x_key]) if x_key and not numeric else [""]
    panels = max(len(metrics), 1)
    per_row = min(panels, 3)
    fig = plots.new_figure(4.6 * per_row, 3.8 * math.ceil(panels / per_row))
    axes = np.atleast_1d(fig.subplots(math.ceil(panels / per_row), per_row)).ravel()
    for ax, metric in zip(axes, metrics):
        for (label, points), text in zip(lines.items(), labels.text):
            xs = sorted(points, key=lambda v: (v if numeric else categories.index(v) if v in categories else 0))
            stats = [_stats([r.get(f"eval_{metric}") for r in points[x]]) for x in xs]
            positions = xs if numeric else [categories.index(x) if x in categories else 0 for x in xs]
            ax.errorbar(
                positions, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3,
                linestyle="--" if "from scratch" in label else "-", label=text or "runs",
            )
        if numeric:
            values = [v for v in study.grid[x_key] if v > 0]
            if values and len(values) == len(study.grid[x_key]) and max(values) >= 10 * min(values):
                ax.set_xscale("log")
            ax.set_xticks(list(study.grid[x_key]), [str(v) for v in study.grid[x_key]])
            ax.minorticks_off()
        else:
            ax.set_xticks(range(len(categories)), [str(c) for c in categories], fontproperties=font)
        ax.set_xlabel(x_key or "")
        ax.set_title(f"{DISPLAY_NAMES.get(metric, metric)} on the eval split")
        ax.grid(True, alpha=0.3)
        ax.legend(prop=FontProperties(family=labels.family, size=8), title=", ".join(short_key(k, keys) for k in others) or None,
                  title_fontsize=8)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(f"mean ± std over {study.seeds} seed(s); a report, not a selection", fontsize=10)
    return fig


def write(out: Path, recipe: Recipe, rows: list[dict[str, Any]], total: int) -> None:
    """study.csv, study.md and study.png in ``out`` (each written whole, then renamed)."""
    from finetune.evaluation import plots

    out = Path(out)
    write_csv(out / "study.csv", rows)
    write_text(out / "study.md", markdown(recipe, rows, total))
    if rows:
        plots.save_figure(figure(recipe, rows), out / "study.png")
