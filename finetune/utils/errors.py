"""Exit codes, the user-error classes, and the one-line error text every command prints."""

from __future__ import annotations

import sys

#: A problem with the recipe, data, model, options or output folder (a full disk
#: included): the one-line message says which file, key or folder, and how to fix it;
#: nothing the user had is overwritten.
EXIT_USER_ERROR = 2
#: Stopped by Ctrl-C: at the end of a step, after writing a checkpoint, or at once once
#: training was over; the message says what is saved (128 + SIGINT's 2, as a shell reports it).
EXIT_INTERRUPTED = 130
#: Stopped by SIGTERM, the same way (128 + 15, as a shell reports SIGTERM).
EXIT_PREEMPTED = 143


class UserError(Exception):
    """A problem the user can fix; ``str()`` is one line naming the file, key or option and the fix."""


def report(message: str) -> int:
    """Print ``finetune: error: MESSAGE`` on stderr (a line each when a message lists several
    problems, as a recipe's does); returns the exit code for user errors."""
    for line in str(message).splitlines() or [""]:
        print(f"finetune: error: {line}", file=sys.stderr)
    return EXIT_USER_ERROR


class ModelError(UserError, ValueError):
    """A problem with the model the recipe names, or its strategy; one line, with the fix."""


class InferenceError(UserError, ValueError):
    """A problem with a saved model, the data or the options of `finetune eval` or
    `finetune predict`; one line, with the fix."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors are often paragraphs);
    the exception's type when it has no message. Keeps user errors to one line."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
