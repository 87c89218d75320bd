"""Exit codes, the base class of user errors, and the one-line error printer every command uses."""

from __future__ import annotations

import sys

#: A problem with the recipe, data, model, options or output folder: nothing was trained
#: or overwritten, and the one-line message says which file or key, and how to fix it.
EXIT_USER_ERROR = 2
#: Stopped by Ctrl-C (128 + SIGINT's 2, as a shell reports it).
EXIT_INTERRUPTED = 130
#: Stopped by SIGTERM after writing a checkpoint (128 + 15, as a shell reports SIGTERM).
EXIT_PREEMPTED = 143


class UserError(Exception):
    """A problem the user can fix; ``str()`` is one line naming the file, key or option and the fix."""


def report(message: str) -> int:
    """Print ``finetune: error: MESSAGE`` on stderr (a line each when a message lists several
    problems, as a recipe's does); returns the exit code for user errors."""
    for line in str(message).splitlines() or [""]:
        print(f"finetune: error: {line}", file=sys.stderr)
    return EXIT_USER_ERROR
