"""The logging of a process, taken along to the processes it starts that do not fork from it (loader workers
start from a fork server: ``tsn.data.loader``), so that their lines reach the same console and files."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

# The loggers whose set-up is taken along: the root logger (``logging.basicConfig`` in tools) and "tsn"
# (``tsn.training.trainer.setup_logging``: console and train.log)
LOGGERS = ("", "tsn")


@dataclass(frozen=True)
class HandlerSetup:
    """One handler: a file (``path``, appended to) or the console (``path`` None: stderr), its format and level."""

    path: str | None
    format: str | None
    date_format: str | None
    level: int


@dataclass(frozen=True)
class LoggerSetup:
    """One logger: its name ("" for the root), level, whether it propagates, and its handlers."""

    name: str
    level: int
    propagate: bool
    handlers: tuple[HandlerSetup, ...]


def capture() -> tuple[LoggerSetup, ...]:
    """The set-up of ``LOGGERS`` in this process (file and console handlers only; others are left out)."""
    setups = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        handlers = []
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                path: str | None = handler.baseFilename
            elif isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout):
                path = None
            else:
                continue
            formatter = handler.formatter
            handlers.append(HandlerSetup(path, formatter._fmt if formatter else None,
                                         formatter.datefmt if formatter else None, handler.level))
        setups.append(LoggerSetup(name, logger.level, logger.propagate, tuple(handlers)))
    return tuple(setups)


def apply(setups: tuple[LoggerSetup, ...]) -> None:
    """Give this process's loggers the set-up ``capture`` took elsewhere (their handlers replaced)."""
    for setup in setups:
        logger = logging.getLogger(setup.name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(setup.level)
        logger.propagate = setup.propagate
        for spec in setup.handlers:
            handler = logging.StreamHandler() if spec.path is None else logging.FileHandler(spec.path, mode="a")
            handler.setFormatter(logging.Formatter(spec.format, spec.date_format))
            handler.setLevel(spec.level)
            logger.addHandler(handler)
