"""Annotation lists in mmaction2's two text formats, and class-name files.

- video list: one ``relative/path.ext LABEL`` per line;
- rawframe list: one ``relative/dir NUM_FRAMES LABEL`` per line (a folder of
  ``img_00001.jpg ...`` as written by ``tools/extract_frames.py``).

Paths are relative to the data root. A path may contain spaces: the label is the last
whitespace-separated token (and the frame count the one before it for rawframes); the path
is everything before, inner whitespace kept as written. Blank lines and lines whose first
non-blank character is ``#`` are skipped (full-line comments only: ``#`` inside a path is
part of the path). Labels are 0-based class indices. Files are UTF-8 (a BOM is accepted).

Every malformed line raises ``ListFormatError`` as ``"LIST:LINE: reason"``. Each record
keeps the line it came from (``VideoRecord.line``, not part of equality) so that later
checks, such as a label outside the class list, can name the line too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tsn.errors import UserError
from tsn.fileio import atomic_write_text

LIST_FORMATS = ("video", "rawframes")


class ListFormatError(UserError, ValueError):
    """A bad line in a list or annotation file; str() is ``"LIST:LINE: reason"``.

    ``line_no`` is 1-based; ``None`` where the problem has no line (a JSON item, a whole
    file), and then str() is ``"LIST: reason"``.
    """

    def __init__(self, list_path: str | os.PathLike, line_no: int | None, reason: str) -> None:
        self.list_path = str(list_path)
        self.line_no = line_no
        self.reason = reason
        where = self.list_path if line_no is None else f"{self.list_path}:{line_no}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class VideoRecord:
    """One list entry: ``path`` relative to the data root, 0-based ``label``, and
    ``num_frames`` for rawframe entries (``None`` for videos).

    ``line`` is the 1-based line of the list it was read from (0 when built in code); it is
    left out of ``==`` and ``hash`` so that records compare by content only.
    """

    path: str
    label: int
    num_frames: int | None = None
    line: int = field(default=0, compare=False)


def scan_lines(path: str | os.PathLike) -> Iterator[tuple[int, str | ListFormatError]]:
    """Like ``iter_lines``, but a line that is not UTF-8 comes as its ``ListFormatError`` instead
    of ending the scan, so that a checker can report every bad line of a list."""
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # Split on b"\n" only: str.splitlines would also split on \x0b, \x1c, U+2028 ... and so
    # shift line numbers against what an editor shows.
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            yield line_no, ListFormatError(path, line_no, f"not UTF-8 text ({err.reason})")
            continue
        if text and not text.startswith("#"):
            yield line_no, text


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(line_no, text)`` for every non-blank, non-comment line of a UTF-8 text file.

    ``line_no`` is 1-based; ``text`` has surrounding whitespace (and CR of CRLF files)
    stripped. Bytes that are not UTF-8 raise ``ListFormatError`` naming the line.
    """
    for line_no, text in scan_lines(path):
        if isinstance(text, ListFormatError):
            raise text
        yield line_no, text


def _parse_count(token: str, what: str, minimum: int, list_path: str | os.PathLike, line_no: int) -> int:
    """A decimal integer token >= ``minimum``, or ListFormatError saying why not."""
    digits = token[1:] if token.startswith("-") else token
    # isdecimal alone would accept other scripts' digits, and int() would accept "1_0" and "+1"
    if not (digits.isascii() and digits.isdecimal()):
        raise ListFormatError(list_path, line_no, f"{what} {token!r} is not an integer")
    value = int(token)
    if value < minimum:
        qualifier = "negative" if value < 0 else f"less than {minimum}"
        raise ListFormatError(list_path, line_no, f"{what} {value} is {qualifier}")
    return value


def parse_line(text: str, format: str, list_path: str | os.PathLike, line_no: int) -> VideoRecord:
    """One stripped list line of ``format`` (``"video"`` or ``"rawframes"``) -> its record;
    ``ListFormatError`` naming ``list_path:line_no`` when it is malformed."""
    if format == "video":
        parts = text.rsplit(maxsplit=1)
        if len(parts) < 2:
            raise ListFormatError(list_path, line_no, f"expected 'PATH LABEL', got {text!r} (missing label)")
        video, label = parts
        return VideoRecord(video, _parse_count(label, "label", 0, list_path, line_no), None, line_no)
    if format == "rawframes":
        parts = text.rsplit(maxsplit=2)
        if len(parts) < 3:
            raise ListFormatError(
                list_path, line_no, f"expected 'PATH NUM_FRAMES LABEL', got {text!r} ({len(parts)} fields)"
            )
        folder, num_frames, label = parts
        return VideoRecord(
            folder,
            _parse_count(label, "label", 0, list_path, line_no),
            _parse_count(num_frames, "frame count", 1, list_path, line_no),
            line_no,
        )
    raise ValueError(f"list format must be one of {LIST_FORMATS}, got {format!r}")


def read_video_list(path: str | os.PathLike) -> list[VideoRecord]:
    """Read a video list (lines ``relative/path.ext LABEL``) into records in file order."""
    return [parse_line(text, "video", path, line_no) for line_no, text in iter_lines(path)]


def read_rawframe_list(path: str | os.PathLike) -> list[VideoRecord]:
    """Read a rawframe list (lines ``relative/dir NUM_FRAMES LABEL``) into records in file order."""
    return [parse_line(text, "rawframes", path, line_no) for line_no, text in iter_lines(path)]


def read_list(path: str | os.PathLike, format: str) -> list[VideoRecord]:
    """Read a list in ``format`` ``"video"`` or ``"rawframes"``."""
    if format == "video":
        return read_video_list(path)
    if format == "rawframes":
        return read_rawframe_list(path)
    raise ValueError(f"list format must be one of {LIST_FORMATS}, got {format!r}")


def _check_path(record: VideoRecord) -> None:
    """Refuse a path that would not read back as written (so that nothing changes silently)."""
    path = record.path
    if not path or path != path.strip():
        raise ValueError(f"cannot write path {path!r}: empty or with leading/trailing whitespace")
    if "\n" in path or "\r" in path:
        raise ValueError(f"cannot write path {path!r}: it contains a line break")
    if path.startswith("#"):
        raise ValueError(f"cannot write path {path!r}: a line starting with '#' reads as a comment")
    if isinstance(record.label, bool) or not isinstance(record.label, int) or record.label < 0:
        raise ValueError(f"cannot write {path!r}: label must be an integer >= 0, got {record.label!r}")


def write_video_list(records: Iterable[VideoRecord], path: str | os.PathLike) -> None:
    """Write ``relative/path.ext LABEL`` lines atomically; ValueError for a record that
    would not read back unchanged."""
    lines = []
    for record in records:
        _check_path(record)
        lines.append(f"{record.path} {record.label}\n")
    atomic_write_text(path, "".join(lines))


def write_rawframe_list(records: Iterable[VideoRecord], path: str | os.PathLike) -> None:
    """Write ``relative/dir NUM_FRAMES LABEL`` lines atomically; every record needs
    ``num_frames >= 1``."""
    lines = []
    for record in records:
        _check_path(record)
        count = record.num_frames
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"cannot write {record.path!r}: num_frames must be an integer >= 1, got {count!r}")
        lines.append(f"{record.path} {count} {record.label}\n")
    atomic_write_text(path, "".join(lines))


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names, one a line; the class index is the position among the non-blank,
    non-comment lines. Empty files and repeated names raise ``ListFormatError``."""
    names: list[str] = []
    first_seen: dict[str, int] = {}
    for line_no, name in iter_lines(path):
        if name in first_seen:
            raise ListFormatError(path, line_no, f"class {name!r} repeats line {first_seen[name]}")
        first_seen[name] = line_no
        names.append(name)
    if not names:
        raise ListFormatError(path, None, "no class names")
    return names


def write_class_names(names: Sequence[str], path: str | os.PathLike) -> None:
    """Write class names one a line, atomically; ValueError for a name that would not read back."""
    seen: set[str] = set()
    for name in names:
        if not name or name != name.strip() or "\n" in name or "\r" in name or name.startswith("#"):
            raise ValueError(f"cannot write class name {name!r}: empty, padded, multi-line or starting with '#'")
        if name in seen:
            raise ValueError(f"cannot write class names: {name!r} appears twice")
        seen.add(name)
    atomic_write_text(path, "".join(f"{name}\n" for name in names))


def check_labels(records: Sequence[VideoRecord], num_classes: int, list_path: str | os.PathLike) -> None:
    """Raise ``ListFormatError`` at the first record whose label is not in ``[0, num_classes)``,
    naming its list line and how many other lines are out of range too."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    bad = [record for record in records if not 0 <= record.label < num_classes]
    if bad:
        first = bad[0]
        more = f"; {len(bad) - 1} more line(s) out of range" if len(bad) > 1 else ""
        raise ListFormatError(
            list_path,
            first.line or None,
            f"label {first.label} of {first.path!r} is outside the class list "
            f"({num_classes} classes, labels 0..{num_classes - 1}){more}",
        )
