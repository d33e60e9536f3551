"""The errors that are the user's to fix, not bugs: ``UserError`` and the command line's ``UsageError``.

Every error class raised for a bad config key, list line, video, checkpoint, exported file, live source or
argument derives from ``UserError`` (besides the base that callers catch it by, e.g. ``ValueError``), so that
the tools (``tsn.cli.run_main``) print its one-line message and exit 2 instead of showing a traceback,
without importing the layers that raise it. This module imports nothing of the project: it is the lowest layer.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user fixes; ``str()`` is one line (or one line per item, e.g. per video), no traceback."""


class UsageError(UserError):
    """A bad combination of command-line arguments or inputs, found after parsing."""
