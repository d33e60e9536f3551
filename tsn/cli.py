"""Shared command-line plumbing for ``tools/``: one-line errors with exit status 2, no traceback.

A bad config key, list line, video, checkpoint or missing file is the user's to fix, so the
tools print ``error: <what>: <why>`` and exit 2 instead of a traceback; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable

from tsn.config import ConfigError
from tsn.data.lists import ListFormatError
from tsn.engine.checkpoint import CheckpointError
from tsn.io import VideoReadError
from tsn.models import PretrainedWeightsNotFound

class UsageError(Exception):
    """A bad combination of command-line arguments or inputs, found after parsing."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    ConfigError,
    ListFormatError,
    VideoReadError,
    CheckpointError,
    PretrainedWeightsNotFound,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
)


def run_main(main: Callable[[], int | None]) -> None:
    """Call ``main`` and exit with its status; user errors print one line and exit 2."""
    try:
        status = main()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
