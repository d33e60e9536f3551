"""Shared command-line plumbing for ``tools/``: the shared flags, and the entry helper ``run_main`` that every tool
exits through: status 0, 1 where some inputs failed (the tool's ``main`` says so), 2 for a user error, 130 on Ctrl-C.

A bad config key, list line, video, checkpoint or missing file is the user's to fix (a ``tsn.errors.UserError``,
or a missing file or folder), so the tools print ``error: <what>: <why>`` and exit 2 instead of a traceback;
anything else is a bug and keeps its traceback. That holds for errors raised inside DataLoader worker processes too
(``data.on_error: raise`` meeting an unreadable video): torch re-raises those wrapped, with the
worker's traceback as the message, and ``user_error_message`` takes the one line back out.

Under torchrun, the rank that meets the error exits 2 with that line; torchrun then stops the
other ranks (they would otherwise wait forever in the next collective) and exits non-zero.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable

# re-exported: the tools raise UsageError and import it with the other command-line helpers
from tsn.errors import UsageError as UsageError, UserError


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse ``type=``: an integer >= ``minimum`` (argparse reports anything else with exit 2)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one): the default of ``--workers``."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# The flags that mean the same thing in every tool that has them: one name, one type, one default.
# ``tests/test_cli.py`` parses every tool's --help against these; the README's table lists them.
def add_config_args(parser: argparse.ArgumentParser, required: bool = True, what: str = "YAML config") -> None:
    """``--config FILE`` and ``--opt KEY=VALUE`` (repeatable dotted overrides)."""
    parser.add_argument("--config", type=Path, required=required, help=what)
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. train.lr=0.01 (repeatable)")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda`` (auto: CUDA when available)."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the model runs (auto: CUDA when available)")


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bars (logs, CI)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_workers_arg(parser: argparse.ArgumentParser, what: str = "worker processes",
                    default: int | None = None, minimum: int = 1) -> None:
    """``--workers N``: processes working side by side (default: the usable CPUs, ``usable_cpus()``)."""
    parser.add_argument("--workers", type=int_at_least(minimum), default=usable_cpus() if default is None else default,
                        help=f"{what} (default: %(default)s)")


def add_backend_arg(parser: argparse.ArgumentParser) -> None:
    """``--backend auto|pyav|decord|opencv|torchcodec``: the video reader (``tsn.io``; auto: chosen per video at probe)."""
    from tsn.io import BACKEND_CHOICES  # here, not at the top: tsn.cli stays light for tools without videos

    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="video reader (auto: PyAV, OpenCV for the files PyAV cannot number, chosen per video)")


def add_batch_size_arg(parser: argparse.ArgumentParser, what: str, default: int | None = None) -> None:
    """``--batch-size N``: items per batch, ``what`` saying of what."""
    parser.add_argument("--batch-size", type=int_at_least(1), default=default, help=what)


def add_view_args(parser: argparse.ArgumentParser) -> None:
    """``--num-clips N`` and ``--crops 1|3|10``: test views (default: the config's ``test`` section)."""
    parser.add_argument("--num-clips", type=int_at_least(1), help="temporal clips per video (default: test.num_clips)")
    parser.add_argument("--crops", type=int, choices=(1, 3, 10), help="spatial crops per clip (default: test.crops)")


def positive_float(text: str) -> float:
    """argparse ``type=``: a finite number > 0 (NaN and infinity refused)."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


# Missing or misplaced files and folders named on the command line are the user's to fix too.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError)

# torch.utils.data re-raises a worker's exception as ``Caught <Type> in DataLoader worker process
# <n>.\nOriginal Traceback ...\n<module>.<Type>: <message>``: as that type when it can be built
# from this text alone, as a RuntimeError otherwise (VideoReadError needs a path and a reason).
_WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.")


def jpeg_quality(text: str) -> int:
    """argparse ``type=``: a JPEG quality 0..100."""
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be in 0..100, got {value}")
    return value


def add_source_args(parser: argparse.ArgumentParser, what: str = "decoding processes") -> None:
    """The flags of the tools that turn a folder of videos into something else (``extract_frames.py``,
    ``extract_flow.py``, ``prepare_videos.py``): sources, output, list, size, processes, decoder, --strict,
    --no-progress."""
    parser.add_argument("--src", type=Path, required=True, help="root folder of the videos")
    parser.add_argument("--out", type=Path, required=True, help="root folder of the outputs and lists")
    parser.add_argument("--list", type=Path, help="video list 'rel/path.ext LABEL' (paths relative to --src)")
    parser.add_argument("--short-side", type=int_at_least(0), default=256, help="resize short side to this; 0 keeps")
    add_workers_arg(parser, what)
    add_backend_arg(parser)
    parser.add_argument("--strict", action="store_true", help="exit 1 when any video failed")
    add_progress_arg(parser)


def add_extraction_args(parser: argparse.ArgumentParser) -> None:
    """``add_source_args`` and the JPEG quality: the flags ``tools/extract_frames.py`` and ``tools/extract_flow.py`` share."""
    add_source_args(parser)
    parser.add_argument("--quality", type=jpeg_quality, default=95, help="JPEG quality 0..100")


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of a user error (see ``USER_ERRORS``), also of one raised in a
    DataLoader worker and re-raised by torch; None for anything else (a bug)."""
    text = str(error)
    match = _WORKER_ERROR.match(text)
    if match is None:
        return text if isinstance(error, USER_ERRORS) else None
    name = match.group(1)
    if name not in _user_error_names():
        return None
    # The traceback's last line is "<module>.<Type>: <message>".
    _, found, message = text.rstrip().splitlines()[-1].partition(f"{name}: ")
    return message if found else None


def _user_error_names() -> set[str]:
    """The class names of ``USER_ERRORS`` and of every ``UserError`` subclass loaded (a worker's error is
    known by its name only)."""
    names = set()
    kinds: list[type[BaseException]] = list(USER_ERRORS)
    while kinds:
        kind = kinds.pop()
        names.add(kind.__name__)
        kinds += kind.__subclasses__() if issubclass(kind, UserError) else []
    return names


def run_main(main: Callable[[], int | None]) -> None:
    """Call ``main`` and exit with its status; user errors print one line and exit 2."""
    try:
        status = main()
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        for line in message.splitlines() or [""]:  # one "error:" line each (NonFiniteError names videos)
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
