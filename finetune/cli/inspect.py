"""`finetune inspect RECIPE | OUTPUT_DIR`: likely label errors, duplicates and leakage, class balance and outliers of a recipe's data, in OUTPUT_DIR/inspect/."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from finetune.cli.common import add_overrides, checked, positive_int, run_heavy

HELP = "find likely label errors, duplicates, eval images leaked from training, and outliers in a recipe's data"


def similarity(text: str) -> float:
    """An argparse type: a cosine similarity in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a cosine similarity in (0, 1], got {text}")
    return value


def folds(text: str) -> int:
    """An argparse type: an integer >= 2."""
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (each fold's probe is fitted on the others), got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", metavar="RECIPE|OUTPUT_DIR",
        help="a recipe file, or a run's output folder (its recipe.json is read; the report goes in that folder)",
    )
    add_overrides(parser, "override a recipe key, as for train (dotted KEY=VALUE, JSON when it parses); repeatable")
    parser.add_argument("--folds", type=folds, default=5, help="folds of the out-of-fold probe for the label check (default: 5)")
    parser.add_argument("--top", type=positive_int, default=20, help="how many of each finding the pictures and report.md show (default: 20; the CSV files list all)")
    parser.add_argument(
        "--threshold", type=similarity, default=None,
        help="cosine similarity at or above which two images are near-duplicates (default: the recipe's data.duplicate_threshold, 0.95)",
    )
    parser.add_argument(
        "--split", choices=("train", "eval", "all"), default="all",
        help="whose labels to check: the training split (out of fold), the eval split and eval sets (by a probe fitted on the "
        "training split), or all (default); duplicates, leakage and outliers always cover every split",
    )
    parser.add_argument(
        "--mirror", action=argparse.BooleanOptionalAction, default=None,
        help="also pass every image mirrored and average the two features (default: as the recipe's data.augment.hflip)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the folds (default: the recipe's training.data_seed or training.seed)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch of the feature pass (default: 64)")


def load(args: argparse.Namespace):
    """The recipe to inspect: the file, or a run folder's recipe.json with the report going in that folder."""
    from finetune.recipe import RecipeError, load_recipe

    target = Path(args.target)
    if target.is_dir():
        if not (target / "recipe.json").is_file():
            raise RecipeError(
                f"{target}: this folder holds no recipe.json; pass a recipe file, or the output folder of a run that started"
            )
        recipe = load_recipe(target / "recipe.json", args.overrides)
        # The folder may have moved since the run: the report goes where it is now.
        return dataclasses.replace(recipe, output_dir=str(target))
    if not target.exists():
        raise RecipeError(f"{target}: no such recipe file or output folder; check the path")
    return load_recipe(target, args.overrides)


def run(args: argparse.Namespace) -> int:
    recipe, code = checked(lambda: load(args))
    if code is not None:
        return code

    def work() -> None:
        from finetune.inspection.report import terminal
        from finetune.inspection.run import Options, run_inspect

        options = Options(
            folds=args.folds, top=args.top, threshold=args.threshold, split=args.split, mirror=args.mirror,
            batch_size=args.batch_size, seed=args.seed,
        )
        findings, folder = run_inspect(recipe, options)
        print("\n".join(terminal(findings, folder)))

    _, code = run_heavy(work, ctrl_c="stopped by Ctrl-C; nothing of the run's was changed (the report is written at the end)")
    return code or 0
