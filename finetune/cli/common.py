"""What the commands share: option types, logging, and the error ladder every training command runs through."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from finetune.utils.errors import EXIT_INTERRUPTED, report


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def add_tta(parser: argparse.ArgumentParser) -> None:
    """``--tta MODE``: the test-time views (``evaluation.tta``); None when not given."""
    from finetune.deploy.saved_run import TTA_MODES

    parser.add_argument(
        "--tta", choices=TTA_MODES, default=None,
        help="test-time augmentation, the softmax averaged over the views: none, hflip (the image and its mirror "
        "image) or hflip+crops (those and 4 corner crops, each mirrored: 10 views); default: what the run's "
        "recipe.json says (evaluation.tta), none for an exported folder",
    )


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE``, repeatable, collected in ``args.overrides``."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def setup_logging() -> None:
    """finetune's log lines on the main process, warnings only on the others."""
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


def checked(load: Callable[[], Any], *errors: type[BaseException]) -> tuple[Any, int | None]:
    """The first step of a training command: ``load()`` (the recipe and its checks), then the
    CPU threads, before torch is imported. Returns (what ``load`` gave, None), or (None,
    the exit code) after printing the problem in one line per problem."""
    from finetune.recipe import RecipeError
    from finetune.utils.threads import ThreadsError, configure_threads

    try:
        value = load()
        configure_threads()  # before any heavy work: launchers leave a CPU job one core
    except (RecipeError, ThreadsError, *errors) as err:
        return None, report(str(err))
    return value, None


def run_heavy(work: Callable[[], Any], *, interrupted: str = "", ctrl_c: str) -> tuple[Any, int | None]:
    """The second step: logging, then ``work()`` (torch, transformers and datasets come in
    only now), through the error ladder: a user or data problem is one line and exit 2; a
    signal (SIGTERM or Ctrl-C) its message, with ``interrupted`` appended, and exit 143 or
    130; Ctrl-C while Python's own handler is in place (before training) ``ctrl_c`` and 130.
    Returns (what ``work`` gave, None) or (None, the exit code)."""
    from finetune.data import DataError
    from finetune.training.interrupts import Interrupted
    from finetune.utils.errors import UserError

    setup_logging()
    try:
        return work(), None
    # UserError: recipe, model, output-folder (in use, full disk too) and push problems;
    # the data errors are their module's own class.
    except (UserError, DataError) as err:
        return None, report(str(err))
    except Interrupted as err:  # SIGTERM or Ctrl-C: the message says what is saved
        print(f"finetune: {err}{interrupted}", file=sys.stderr)
        return None, err.exit_code
    except KeyboardInterrupt:
        print(f"finetune: {ctrl_c}", file=sys.stderr)
        return None, EXIT_INTERRUPTED
