"""The entry point: ``accelerate launch finetune/run.py --recipe R.json [--set KEY=VALUE ...]``.

Also installed as the ``finetune`` console script, with subcommands (finetune/cli/, one
module each):

    finetune train --recipe R.json [--set KEY=VALUE ...] [--overwrite]
    finetune validate R.json [R.json ...]
    finetune eval OUTPUT_DIR --data DATASET [--split test]
    finetune predict OUTPUT_DIR IMAGE_OR_FOLDER... [--top-k 5] [--format csv|jsonl]
    finetune push OUTPUT_DIR --repo-id USER/NAME [--private] [--revision BRANCH] [--dry-run]
    finetune study R.json [--grid KEY=V1,V2,...] [--seeds K] [--scratch] [--set KEY=VALUE ...]
    finetune search R.json --trials N [--timeout S] [--sampler tpe|random|grid] [--no-final]
    finetune export OUTPUT_DIR [--quantize int8] [--opset N] [--out DIR]
    finetune cache list | remove --run OUTPUT_DIR | --older-than DAYS | --orphaned | --all [--dry-run]

The command line is the top of the import graph: it imports the steps, and no module
imports it (the layers are declared in pyproject.toml and checked by import-linter).
"""

from __future__ import annotations

import logging
import os
import sys

if __package__ in (None, ""):
    # Run as a script (`accelerate launch finetune/run.py`): import the package, not the
    # sibling modules as top-level ones.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))

from finetune.cli.main import main  # noqa: E402 - after the path is set for a script run


def cli() -> None:
    """The ``finetune`` console script and ``python finetune/run.py``: :func:`main`, then a quick exit.

    After a command returns, Python's own shutdown of the interpreter (freeing the few
    thousand modules that torch, transformers and datasets import) takes seconds, after
    every byte was written. So the last exit handler (registered
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
