"""Atomic file writes: a reader (or a run killed half way) sees the old file or the new one, never half.

Used for every file tsn writes that a later step reads back: lists, configs, checkpoints,
reports, features.
"""

from __future__ import annotations

import csv
import io
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not possible on every OS/file system: skipped there)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, rename it to ``path``.

    Creates the parent folder. On any error (or interrupt) the temporary file is removed and
    ``path`` is left untouched. The new file gets the usual mode (0o666 less the umask), not
    the owner-only mode of ``tempfile.mkstemp``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 with ``\\n`` line ends to ``path`` atomically (see ``atomic_write``)."""
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a CSV (``header`` then ``rows``) to ``path`` atomically (see ``atomic_write``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
