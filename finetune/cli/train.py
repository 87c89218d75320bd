"""`finetune train --recipe R.json` (and `accelerate launch finetune/run.py --recipe R.json`): train a recipe."""

from __future__ import annotations

import argparse
import logging

from finetune.cli.common import add_overrides, checked, run_heavy
from finetune.utils.errors import report

HELP = "train a recipe (the default command)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="the recipe JSON file")
    add_overrides(
        parser,
        "override a recipe key (dotted, e.g. training.learning_rate=3e-4); the value is JSON "
        "when it parses, else a string; repeatable",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run of a different recipe (or other files) in output_dir instead of stopping",
    )


def run(args: argparse.Namespace) -> int:
    from finetune.recipe import load_recipe

    recipe, code = checked(lambda: load_recipe(args.recipe, args.overrides))
    if code is not None:
        return code
    if recipe.search is not None:
        # Training the values as written would quietly leave the search undone.
        return report(
            f"{args.recipe}: the recipe has a 'search' block; run `finetune search {args.recipe} --trials N`, "
            "or train the values as written with --set search=null"
        )

    def work() -> None:
        from finetune.training.train import train

        if recipe.study is not None:
            logging.getLogger("finetune").info(
                "the recipe's 'study' block is for `finetune study %s`; this trains the recipe as it is", args.recipe
            )
        train(recipe, overwrite=args.overwrite, source=str(args.recipe))

    _, code = run_heavy(work, ctrl_c="stopped by Ctrl-C before training started; run the same command again to start")
    return code or 0
