"""`finetune study R.json [--grid KEY=V1,V2,...] [--seeds K] [--scratch]`: a recipe over a grid of values and seeds, each cell reported."""

from __future__ import annotations

import argparse
from pathlib import Path

from finetune.cli.common import add_overrides, checked, run_heavy

HELP = "run a recipe over a grid of values and seeds, and report each cell"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="the recipe JSON file (its 'study' block holds the grid, seeds and scratch)")
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2,...",
        help="a recipe key and the values to try, e.g. data.samples_per_class=5,20,100 (each value JSON when it "
        "parses, else a string; a value with a comma in it goes in the recipe's study block); replaces that key's "
        "values in the recipe's study.grid; repeatable",
    )
    parser.add_argument("--seeds", type=int, default=None, help="runs per cell, seed i adding i to training.seed and data_seed")
    parser.add_argument(
        "--scratch", action=argparse.BooleanOptionalAction, default=None,
        help="also run each cell's architecture from random initialisation (strategy full)",
    )
    add_overrides(parser, "override a recipe key, as for train (e.g. --set study.grid={} to clear the grid)")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace a run of a different recipe in a cell's folder instead of stopping",
    )


def study_recipe(args: argparse.Namespace):
    """The recipe with --set applied, then --grid (key by key into study.grid), --seeds and
    --scratch; the recipe's own checks (finetune/recipe/) then validate them like any key."""
    from finetune.recipe import RecipeError, apply_overrides, parse_override, read_recipe, recipe_from_dict

    source = str(args.recipe)
    raw = apply_overrides(read_recipe(args.recipe), args.overrides, source)
    study = raw.get("study")
    if args.grid or args.seeds is not None or args.scratch is not None:
        study = raw["study"] = dict(study) if isinstance(study, dict) else {} if study is None else study
    if not isinstance(study, dict) or not isinstance(study.get("grid", {}), dict):
        return recipe_from_dict(raw, source)  # which names the wrong type
    for text in args.grid:
        key, sep, values = text.partition("=")
        if not sep or not values or any(not part for part in key.split(".")):
            raise RecipeError(
                f"--grid {text!r}: expected KEY=V1,V2,... with a dotted recipe key, e.g. model.strategy=linear_probe,full"
            )
        # Each value as --set reads one: JSON when it parses, else a string.
        study["grid"] = {**study.get("grid", {}), key: [parse_override(f"v={v}")[1] for v in values.split(",")]}
    if args.seeds is not None:
        study["seeds"] = args.seeds
    if args.scratch is not None:
        study["scratch"] = args.scratch
    return recipe_from_dict(raw, source)


def run(args: argparse.Namespace) -> int:
    recipe, code = checked(lambda: study_recipe(args))
    if code is not None:
        return code

    def work() -> None:
        from finetune.sweeps.study import run_study

        run_study(recipe, source=str(args.recipe), overwrite=args.overwrite)

    _, code = run_heavy(
        work,
        interrupted="; the study's finished runs are kept, and the same command skips them",
        ctrl_c="stopped by Ctrl-C; run the same command again to continue the study",
    )
    if code is not None:
        return code
    print(f"study: {Path(recipe.output_dir) / 'study.md'}")
    return 0
