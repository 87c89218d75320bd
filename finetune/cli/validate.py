"""`finetune validate R.json [R.json ...]`: check recipes without loading any model or data."""

from __future__ import annotations

import argparse
import sys

from finetune.cli.common import add_overrides
from finetune.utils.errors import EXIT_USER_ERROR

HELP = "check recipes without loading anything"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipes", nargs="+", help="recipe JSON files")
    add_overrides(parser, "override a recipe key, as for train; repeatable")


def run(args: argparse.Namespace) -> int:
    from finetune.recipe import RecipeError, load_recipe

    # The recipe's own checks cover the training block (types, ranges, the contradictions
    # TrainingArguments would refuse, early stopping) without importing torch, which
    # building TrainingArguments would: seconds, most of this command's time.
    failed = 0
    for path in args.recipes:
        try:
            recipe = load_recipe(path, args.overrides)
        except RecipeError as err:
            for line in str(err).splitlines():  # one line per problem in the recipe
                print(f"FAIL {line}", file=sys.stderr)
            failed += 1
        else:
            print(f"ok   {path}: {recipe.description.splitlines()[0][:80]}")
    return EXIT_USER_ERROR if failed else 0
