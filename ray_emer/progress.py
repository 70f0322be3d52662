"""Progress lines of long jobs: one style everywhere. They go to stderr, so stdout carries only a command's result
(the summary JSON that scripts read); every ``run_*`` function takes ``log=`` and defaults to ``say``."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
