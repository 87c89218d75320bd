"""The ``finetune`` parser and dispatch: each command's module adds its options and runs it.

Exit codes (:mod:`finetune.utils.errors`): 0 success; 2 a problem with the recipe, data, model
or output folder (a one-line message per problem says which file or key, and how to fix
it; nothing was trained), or a full disk; 130 stopped by Ctrl-C and 143 by SIGTERM, after
writing a checkpoint (run the same command to continue).
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Each command and the module under finetune/cli/ that holds it (`add_arguments`, `run`, `HELP`).
COMMANDS = {
    "train": "train",
    "validate": "validate",
    "eval": "eval",
    "predict": "predict",
    "push": "push",
    "study": "study",
    "search": "search",
    "export": "export",
    "cache": "cache",
    "inspect": "inspect",
    "new": "new",
}


def _module(command: str):
    return importlib.import_module(f"finetune.cli.{COMMANDS[command]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune",
        description="Fine-tune a pretrained image classifier from a JSON recipe.",
    )
    sub = parser.add_subparsers(dest="command")
    for command in COMMANDS:
        module = _module(command)
        module.add_arguments(sub.add_parser(command, help=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `finetune/run.py --recipe R` without a subcommand means `train`.
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["train", *argv]
    args = build_parser().parse_args(argv)
    return _module(args.command).run(args)
