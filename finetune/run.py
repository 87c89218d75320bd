"""Command line: ``accelerate launch finetune/run.py --recipe R.json [--set KEY=VALUE ...]``.

Also installed as the ``finetune`` console script, with subcommands:

    finetune train --recipe R.json [--set KEY=VALUE ...] [--overwrite]
    finetune validate R.json [R.json ...]
    finetune eval OUTPUT_DIR --data DATASET [--split test]
    finetune predict OUTPUT_DIR IMAGE_OR_FOLDER... [--top-k 5] [--format csv|jsonl]
    finetune push OUTPUT_DIR --repo-id USER/NAME [--private] [--revision BRANCH] [--dry-run]
    finetune study R.json [--grid KEY=V1,V2,...] [--seeds K] [--scratch] [--set KEY=VALUE ...]
    finetune search R.json --trials N [--timeout S] [--sampler tpe|random|grid] [--no-final]
    finetune export OUTPUT_DIR [--quantize int8] [--opset N] [--out DIR]

Exit codes (errors.py): 0 success; 2 a problem with the recipe, data, model or output
folder (a one-line message per problem says which file or key, and how to fix it; nothing
was trained), or a full disk; 130 stopped by Ctrl-C and 143 by SIGTERM, after writing a
checkpoint (run the same command to continue).

The command line is the top of the import graph: it imports the steps, and no module
imports it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (`accelerate launch finetune/run.py`): import the package, not the
    # sibling modules as top-level ones.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))

COMMANDS = ("train", "validate", "eval", "predict", "push", "study", "search", "export")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune",
        description="Fine-tune a pretrained image classifier from a JSON recipe.",
    )
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train a recipe (the default command)")
    _add_train_args(train)
    validate = sub.add_parser("validate", help="check recipes without loading anything")
    validate.add_argument("recipes", nargs="+", help="recipe JSON files")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    from . import evaluation, export, hub, predict

    evaluation.add_eval_args(sub.add_parser("eval", help="score a saved model on a data set and write the report"))
    predict.add_predict_args(sub.add_parser("predict", help="label images with a saved model"))
    hub.add_push_args(sub.add_parser("push", help="upload an output folder to the Hugging Face Hub"))
    export.add_export_args(sub.add_parser("export", help="export a saved model to ONNX (optionally int8), checked against PyTorch"))
    _add_study_args(sub.add_parser("study", help="run a recipe over a grid of values and seeds, and report each cell"))
    from . import search

    search.add_search_args(sub.add_parser("search", help="tune a recipe's 'search' block with optuna, then train the best"))
    return parser


def _add_study_args(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, as for train (e.g. --set study.grid={} to clear the grid)")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace a run of a different recipe in a cell's folder instead of stopping",
    )


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="the recipe JSON file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key (dotted, e.g. training.learning_rate=3e-4); the value is JSON "
        "when it parses, else a string; repeatable",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run of a different recipe (or other files) in output_dir instead of stopping",
    )


def _setup_logging() -> None:
    # From the launcher's environment, not PartialState(): its first construction decides
    # the device and backend for the whole process, which TrainingArguments must do.
    main = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING,
        format="%(asctime)s finetune: %(message)s",
        datefmt="%H:%M:%S",
    )
    import transformers

    transformers.logging.set_verbosity_warning()
    if not main:
        import datasets

        datasets.disable_progress_bars()


def cmd_validate(args: argparse.Namespace) -> int:
    from .errors import EXIT_USER_ERROR
    from .recipe import RecipeError, load_recipe

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


def cmd_train(args: argparse.Namespace) -> int:
    from .errors import EXIT_INTERRUPTED, UserError, report
    from .recipe import RecipeError, load_recipe
    from .threads import ThreadsError, configure_threads

    try:
        recipe = load_recipe(args.recipe, args.overrides)
        configure_threads()  # before any heavy work: launchers leave a CPU job one core
    except (RecipeError, ThreadsError) as err:
        return report(str(err))
    if recipe.search is not None:
        # Training the values as written would quietly leave the search undone.
        return report(
            f"{args.recipe}: the recipe has a 'search' block; run `finetune search {args.recipe} --trials N`, "
            "or train the values as written with --set search=null"
        )
    # torch, transformers and datasets come in only now: a bad recipe answers in a blink.
    from .data import DataError
    from .interrupts import Interrupted
    from .train import train

    _setup_logging()
    if recipe.study is not None:
        logging.getLogger("finetune").info(
            "the recipe's 'study' block is for `finetune study %s`; this trains the recipe as it is", args.recipe
        )
    try:
        train(recipe, overwrite=args.overwrite, source=str(args.recipe))
    # UserError: recipe, model, output-folder (in use, full disk too) and push problems;
    # the data errors are their module's own class.
    except (UserError, DataError) as err:
        return report(str(err))
    except Interrupted as err:  # SIGTERM or Ctrl-C: the message says what is saved
        print(f"finetune: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C before training started, when Python's own handler is in place
        print(
            "finetune: stopped by Ctrl-C before training started; run the same command again to start",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0


def study_recipe(args: argparse.Namespace):
    """The recipe with --set applied, then --grid (key by key into study.grid), --seeds and
    --scratch; the recipe's own checks (recipe.py) then validate them like any key."""
    from .recipe import RecipeError, apply_overrides, parse_override, read_recipe, recipe_from_dict

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


def cmd_study(args: argparse.Namespace) -> int:
    from .errors import EXIT_INTERRUPTED, UserError, report
    from .recipe import RecipeError
    from .threads import ThreadsError, configure_threads

    try:
        recipe = study_recipe(args)
        configure_threads()
    except (RecipeError, ThreadsError) as err:
        return report(str(err))
    from .data import DataError
    from .interrupts import Interrupted
    from .study import run_study

    _setup_logging()
    try:
        run_study(recipe, source=str(args.recipe), overwrite=args.overwrite)
    except (UserError, DataError) as err:
        return report(str(err))
    except Interrupted as err:
        print(f"finetune: {err}; the study's finished runs are kept, and the same command skips them", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("finetune: stopped by Ctrl-C; run the same command again to continue the study", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"study: {Path(recipe.output_dir) / 'study.md'}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .errors import EXIT_INTERRUPTED, UserError, report
    from .recipe import RecipeError, apply_overrides, load_recipe
    from .search import Options, SearchError, check
    from .threads import ThreadsError, configure_threads

    options = Options(args.trials, args.timeout, args.sampler, args.pruner, args.final)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        # The recipe as written (with --set): the best recipe keeps its form, not every default.
        raw = apply_overrides(json.loads(Path(args.recipe).read_text(encoding="utf-8")), args.overrides, args.recipe)
        check(recipe, options, args.recipe)
        configure_threads()
    except (RecipeError, SearchError, ThreadsError) as err:
        return report(str(err))
    from .data import DataError
    from .interrupts import Interrupted
    from .search import search

    _setup_logging()
    try:
        result = search(recipe, raw, args.recipe, options)
    except (UserError, DataError) as err:
        return report(str(err))
    except Interrupted as err:  # in the final run: the message says what is saved
        print(f"finetune: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(
            "finetune: search stopped by Ctrl-C; finished trials are kept: run the same command again to continue",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    final = result.get("final")
    if final:
        metric = result["metric"]
        shown = f"eval {metric} {final[f'eval_{metric}']:.4f}" if f"eval_{metric}" in final else "scored"
        print(f"finetune: search: the best recipe, trained in {Path(recipe.output_dir) / 'final'}: {shown}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run.py --recipe R` without a subcommand means `train`.
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv = ["train", *argv]
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return cmd_validate(args)
    if args.command == "study":
        return cmd_study(args)
    if args.command == "search":
        return cmd_search(args)
    if args.command in ("eval", "predict", "push", "export"):
        from . import evaluation, export, hub, predict

        handler = {
            "eval": evaluation.cmd_eval, "predict": predict.cmd_predict, "push": hub.cmd_push, "export": export.cmd_export,
        }[args.command]
        return handler(args)
    return cmd_train(args)


def cli() -> None:
    """The ``finetune`` console script and ``python finetune/run.py``: :func:`main`, then a quick exit.

    After a command returns, Python's own shutdown of the interpreter (freeing the few
    thousand modules that torch, transformers and datasets import) took 1.7-2.0 s on the
    2-core machine, after every byte was written. So the last exit handler (registered
    first, exit handlers run last-in first-out) flushes the logs and the standard streams
    and ends the process with ``os._exit``: every other exit handler (multiprocessing's
    workers, temporary folders, the distributed process group) has run by then. When
    ``main`` raises, the normal exit runs, with its traceback and code.
    """
    import atexit

    code: list[int] = []

    def leave() -> None:
        if code:
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
                    pass
            os._exit(code[0])

    atexit.register(leave)
    result = main()
    code.append(0 if result is None else int(result))
    sys.exit(code[0])


if __name__ == "__main__":
    if __package__ in (None, ""):
        from finetune.run import cli as _cli  # the package's own copy of this module
    else:
        _cli = cli
    _cli()
