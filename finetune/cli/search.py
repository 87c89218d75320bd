"""`finetune search R.json --trials N`: tune a recipe's `search` block with optuna, then train the best recipe."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from finetune.cli.common import add_overrides, checked, positive_int, run_heavy

HELP = "tune a recipe's 'search' block with optuna, then train the best"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a recipe with a 'search' block")
    parser.add_argument("--trials", type=positive_int, required=True, help="how many trials the search runs in all")
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="start no new trial after S seconds of this command (the search continues when run again)",
    )
    parser.add_argument(
        "--sampler", choices=("tpe", "random", "grid"), default="tpe", help="how trials are chosen (default: tpe)"
    )
    parser.add_argument(
        "--pruner", choices=("median", "none"), default="median",
        help="median: stop a trial whose validation score at an epoch's end is below the median of earlier "
        "trials there (default: median)",
    )
    parser.add_argument(
        "--final", action=argparse.BooleanOptionalAction, default=True,
        help="train the best recipe in OUTPUT/final and score it, once, on the eval split (default: on)",
    )
    add_overrides(parser, "override a recipe key, as with finetune train; repeatable")


def run(args: argparse.Namespace) -> int:
    from finetune.recipe import apply_overrides, load_recipe
    from finetune.sweeps.search import Options, SearchError, check

    options = Options(args.trials, args.timeout, args.sampler, args.pruner, args.final)

    def load():
        recipe = load_recipe(args.recipe, args.overrides)
        # The recipe as written (with --set): the best recipe keeps its form, not every default.
        raw = apply_overrides(json.loads(Path(args.recipe).read_text(encoding="utf-8")), args.overrides, args.recipe)
        check(recipe, options, args.recipe)
        return recipe, raw

    loaded, code = checked(load, SearchError)
    if code is not None:
        return code
    recipe, raw = loaded

    def work():
        from finetune.sweeps.search import search

        return search(recipe, raw, args.recipe, options)

    result, code = run_heavy(
        work, ctrl_c="search stopped by Ctrl-C; finished trials are kept: run the same command again to continue"
    )
    if code is not None:
        return code
    final = result.get("final")
    if final:
        metric = result["metric"]
        shown = f"eval {metric} {final[f'eval_{metric}']:.4f}" if f"eval_{metric}" in final else "scored"
        print(f"finetune: search: the best recipe, trained in {Path(recipe.output_dir) / 'final'}: {shown}", file=sys.stderr)
    return 0
