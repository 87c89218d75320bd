"""`finetune study`: one recipe run over a grid of values and several seeds (and from random initialisation), reported, not selected from.

``finetune study RECIPE [--grid KEY=V1,V2,...] [--seeds K] [--scratch]`` runs every
combination of the grid's values (the recipe's ``study`` block, which the options
override key by key), each with K seeds: seed i adds i to ``training.seed`` and to
``training.data_seed``, so both the training's randomness and the k-shot draw change.
``--scratch`` adds every combination once more with ``model.from_scratch`` (strategy
full): the same architecture from random initialisation.

Each cell × seed is a normal run of its own recipe in ``OUTPUT_DIR/runs/CELL/seed-I/``
(model, ``eval_results.json``, card), trained in this process by ``training.train.train``. A run
whose folder already holds its finished results for the same recipe is skipped, so a
killed study continues where it stopped when the same command runs again (the cut-off
run resumes from its last checkpoint, or starts again). Linear probes on cached features
share the frozen backbone's features between runs on the same decoded split
(``finetune.training.shared.SharedWork``): one backbone pass per seed and data subset, and one
for the eval split.

A study is a report, not a selection: every run is scored on the eval split, so choosing
the best cell by these numbers and quoting its score would report a selected score as a
test score (``finetune search`` selects on the validation piece instead). The study's
files say so: ``study.csv``, ``study.md`` and ``study.png`` (:mod:`finetune.sweeps.study_report`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.recipe import Recipe, RecipeError, StudyConfig, apply_overrides, recipe_from_dict
from finetune.sweeps.study_report import cell_label, short_key, text_of
from finetune.utils.files import slug

logger = logging.getLogger("finetune")


@dataclass
class Cell:
    """One run of a study: a combination of grid values, a seed, its folder and recipe."""

    values: dict[str, Any]  # grid key → value, as the grid lists it
    scratch: bool
    seed: int  # 0 .. seeds-1
    recipe: Recipe

    @property
    def folder(self) -> Path:
        return Path(self.recipe.output_dir)

    @property
    def label(self) -> str:
        """The cell, without the seed: ``strategy=full, samples_per_class=5``."""
        return cell_label(self.values, self.scratch)


def _folder_name(values: dict[str, Any], scratch: bool) -> str:
    keys = list(values)
    parts = [f"{short_key(k, keys)}-{slug(text_of(v), 'x')}" for k, v in values.items()]
    return "__".join(parts + (["scratch"] if scratch else [])) or "recipe"


def seeds_of(recipe: Recipe) -> tuple[int, int]:
    """The recipe's (training.seed, training.data_seed) as a run uses them: seed 42 unless
    set (``finetune.training.arguments.training_arguments``), the data seed following the
    seed unless set (``finetune.training.arguments.data_seed``)."""
    from finetune.training.arguments import data_seed

    return int(recipe.training.get("seed", 42)), data_seed(recipe)


def settings(study: StudyConfig) -> list[tuple[dict[str, Any], bool]]:
    """Every combination of the grid's values, in the grid's order; with ``scratch``, each
    again from random initialisation (strategy full, so a grid over strategies gives one
    scratch cell per combination of the other keys)."""
    keys = list(study.grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*study.grid.values())]
    out = [(values, False) for values in combos]
    if study.scratch:
        seen: set[str] = set()
        for values in combos:
            values = {k: ("full" if k == "model.strategy" else v) for k, v in values.items()}
            key = json.dumps(values, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append((values, True))
    return out


def plan(recipe: Recipe, source: str) -> list[Cell]:
    """Every run of the study, each with its recipe built and checked: all the problems of
    every combination are raised together, one line each, before anything runs."""
    study = recipe.study or StudyConfig()
    base = recipe.to_dict()
    base.pop("study", None)
    out = Path(recipe.output_dir) / "runs"
    seed, data_seed = seeds_of(recipe)
    cells: list[Cell] = []
    problems: list[str] = []
    folders: dict[str, str] = {}
    for values, scratch in settings(study):
        label = cell_label(values, scratch)
        name = _folder_name(values, scratch)
        if name in folders and folders[name] != label:  # two values that write alike ("a b", "a-b")
            name = f"{name}__{len(folders)}"
        folders[name] = label
        for i in range(study.seeds):
            overrides = [f"{k}={json.dumps(v)}" for k, v in values.items()]
            if scratch:
                overrides += ["model.from_scratch=true", 'model.strategy="full"']
            overrides += [
                f"training.seed={seed + i}",
                f"training.data_seed={data_seed + i}",
                f"output_dir={json.dumps(str(out / name / f'seed-{i}'))}",
                # A cell is one point of a report: it publishes nothing and claims no result.
                "hub.push=false",
                "expected=null",
                f"description={json.dumps(f'{recipe.description} [study cell: {label}; seed {i}]')}",
            ]
            try:
                cell = recipe_from_dict(apply_overrides(base, overrides, source), source)
            except RecipeError as err:
                problems += [f"{line} (study cell {label})" for line in str(err).splitlines()]
                break  # the other seeds of this cell have the same problem
            cells.append(Cell(values, scratch, i, cell))
    if problems:
        raise RecipeError("\n".join(dict.fromkeys(problems)))
    return cells


def is_finished(cell: Cell) -> bool:
    """The run's folder holds its results and card, for this very recipe."""
    from finetune.training.output_dir import comparable

    folder = cell.folder
    try:
        previous = json.loads((folder / "recipe.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        (folder / "eval_results.json").is_file()
        and (folder / "README.md").is_file()
        and comparable(previous) == comparable(cell.recipe.to_dict())
    )


def read_results(cell: Cell) -> dict[str, Any]:
    """One row of study.csv: the cell, its seeds and every number its run wrote."""
    folder = cell.folder
    row: dict[str, Any] = {"cell": cell.label}
    row.update(cell.values)
    row["init"] = "scratch" if cell.scratch else "pretrained"
    row |= {"seed": cell.seed, "training.seed": cell.recipe.training["seed"], "training.data_seed": cell.recipe.training["data_seed"]}
    results = json.loads((folder / "eval_results.json").read_text())
    row.update({k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    try:
        train = json.loads((folder / "train_results.json").read_text())
        row["train_runtime"] = train.get("train_runtime")
    except (OSError, ValueError):
        pass
    try:
        report = json.loads((folder / "data_report.json").read_text())
        row["train_images"] = report["splits"]["train"]["images"]
    except (OSError, ValueError, KeyError):
        pass
    row["folder"] = str(folder)
    return row


def run_study(recipe: Recipe, source: str = "recipe", overwrite: bool = False) -> list[dict[str, Any]]:
    """Run (or finish) every cell of the study, and write study.csv / .md / .png after each
    run; returns the rows of study.csv, in the study's order."""
    from finetune.sweeps import study_report
    from finetune.training.shared import SharedWork
    from finetune.training.train import train
    from finetune.utils import progress
    from finetune.utils.files import write_json

    cells = plan(recipe, source)
    # The launcher's rank, not PartialState(): its first construction decides the device and
    # backend for the whole process, which each run's TrainingArguments must do (as in
    # finetune.cli.common.setup_logging).
    rank = int(os.environ.get("RANK", "0"))
    out = Path(recipe.output_dir)
    study = recipe.study or StudyConfig()
    finished = [is_finished(c) for c in cells]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "study.json", {
            "recipe": recipe.to_dict(),
            "runs": [{"cell": c.label, "seed": c.seed, "folder": str(c.folder)} for c in cells],
        })
    logger.info(
        "study: %d run(s): %d cell(s) × %d seed(s)%s; %d already finished in %s; every run is scored on the "
        "eval split: a report, not a selection",
        len(cells), len(cells) // study.seeds, study.seeds, ", from-scratch cells included" if study.scratch else "",
        sum(finished), out,
    )
    rows: dict[int, dict[str, Any]] = {i: read_results(c) for i, c in enumerate(cells) if finished[i] and rank == 0}
    bar = progress.bar(None, total=len(cells), desc="study", unit="run", process_index=rank)
    bar.update(sum(finished))
    shared = SharedWork(keep_models=False)
    try:
        for i, cell in enumerate(cells):
            if finished[i]:
                continue
            bar.set_postfix_str(f"{cell.label}, seed {cell.seed}", refresh=True)
            train(cell.recipe, overwrite=overwrite, source=f"{source} (study cell {cell.label}, seed {cell.seed})",
                  shared=shared)
            bar.update(1)
            if rank == 0:  # the report so far: a long study shows its results as it goes
                rows[i] = read_results(cell)
                study_report.write(out, recipe, [rows[k] for k in sorted(rows)], len(cells))
    finally:
        bar.close()
    ordered = [rows[k] for k in sorted(rows)]
    if rank == 0:
        study_report.write(out, recipe, ordered, len(cells))
        if shared.feature_hits:
            logger.info("study: %d backbone pass(es) saved by sharing cached features between runs", shared.feature_hits)
    return ordered
