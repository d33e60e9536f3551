"""Check a data set the way training reads it, and report every bad list line and video (``tools/check_videos.py``).

What is checked, per list:

- every line parses (``tsn.data.lists.parse_line``); a malformed line is reported with its
  number and the scan goes on with the next line;
- with a class count, every label is one of the classes (reported with the line number);
- every entry is read through ``ClipDataset``, so with the same probe, frame count rule (the
  list's count for frame folders, the verified decodable count for video files), reader and
  backend choice as in training: ``probe`` and then one read of the frames of ``num_clips``
  temporal clips of ``num_segments`` segments (TSN's test sampling; ``num_clips=1`` gives the
  validation frames, the middle of each segment). No transform: frames stay at full size.
- frame folders: also the list's frame count against the folder's (a folder with fewer frames
  than the list says fails in training as soon as a sampled index falls beyond its end); flow
  folders (``format="flow"``, lists of ``tools/extract_flow.py``): the list's count of flow pairs
  against the folder's complete ``x_``/``y_`` pairs, and the sampled stacks of ``new_length`` pairs read.

Cost per video: one read of at most ``num_clips * num_segments`` frames with the probe folded
in (PyAV: indexing the file, then the wanted frames and the last one in one pass; OpenCV: one
seek for its count, or one sequential pass when the container's count is wrong). What it cannot see: damage between the sampled frames of
a file whose last frame decodes, which a random training index may still hit (training then
skips or raises that sample, as ``data.on_error`` says). Raise ``num_clips`` to sample more.

Entries are read in ``workers`` DataLoader worker processes (0 = in this process), as training
reads them, with a tqdm progress bar.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import astuple, dataclass, fields
from typing import Sequence

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tsn.data.dataset import ClipDataset
from tsn.data.lists import LIST_FORMATS, ListFormatError, VideoRecord, parse_line, scan_lines
from tsn.data.transforms import ClipTransform
from tsn.fileio import atomic_write_text
from tsn.io import VideoReadError, count_flow_frames, probe

# What a list can hold: videos, frame folders, or flow folders (tsn.data.dataset.FORMATS).
CHECK_FORMATS = LIST_FORMATS + ("flow",)
# Frames are checked, not trained on: keep them as decoded.
_NO_TRANSFORM = ClipTransform(())


@dataclass(frozen=True)
class Problem:
    """One bad list entry: the list, its 1-based line, the path as written there ('' when the line
    does not parse) and why it is bad."""

    list_path: str
    line: int
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.list_path}:{self.line}"
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


PROBLEM_COLUMNS = tuple(field.name for field in fields(Problem))


@dataclass(frozen=True)
class CheckReport:
    """How many entries parsed, and every problem found, in list order."""

    entries: int
    problems: tuple[Problem, ...]


def scan_list(list_path: str | os.PathLike, format: str,
              num_classes: int | None = None) -> tuple[list[VideoRecord], list[Problem]]:
    """The records of every line that parses, and a ``Problem`` for every line that does not or
    whose label is outside ``[0, num_classes)`` (not checked when ``num_classes`` is None).

    A record with a bad label is still returned, so that its video is checked too.
    """
    if format not in CHECK_FORMATS:
        raise ValueError(f"format must be one of {CHECK_FORMATS}, got {format!r}")
    line_format = "rawframes" if format == "flow" else format  # a flow list is a rawframe list of flow folders
    records, problems = [], []
    for line_no, text in scan_lines(list_path):
        try:
            if isinstance(text, ListFormatError):
                raise text
            record = parse_line(text, line_format, list_path, line_no)
        except ListFormatError as error:
            problems.append(Problem(str(list_path), line_no, "", error.reason))
            continue
        records.append(record)
        if num_classes is not None and not 0 <= record.label < num_classes:
            problems.append(Problem(str(list_path), line_no, record.path,
                                    f"label {record.label} is outside the class list "
                                    f"({num_classes} classes, labels 0..{num_classes - 1})"))
    return records, problems


class EntryCheck(Dataset):
    """Item i: why entry i of ``clips`` cannot be read as training reads it ('' when it can)."""

    def __init__(self, clips: ClipDataset) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> str:
        record = self.clips.records[index]
        try:
            if self.clips.format in ("rawframes", "flow"):
                path = self.clips.path(index)
                found = count_flow_frames(path) if self.clips.format == "flow" else probe(path, "rawframes").num_frames
                if found != record.num_frames:
                    what = "flow pairs" if self.clips.format == "flow" else "frames"
                    return f"the list says {record.num_frames} {what}, the folder has {found}"
            self.clips[index]
        except VideoReadError as error:
            return error.reason
        except Exception as error:  # noqa: BLE001 - anything that would stop training is this file's problem
            # A checker that dies on the one odd file would hide every later one; training
            # would die on it too, so it is reported like any other reason.
            text = str(error).strip()
            return f"unexpected {type(error).__name__}: {text.splitlines()[0] if text else ''}"
        return ""


def check_lists(root: str | os.PathLike, list_paths: Sequence[str | os.PathLike], format: str = "video",
                backend: str = "auto", num_classes: int | None = None, num_segments: int = 8,
                num_clips: int = 1, workers: int = 0, progress: bool = True, new_length: int = 1) -> CheckReport:
    """Check every entry of ``list_paths`` (paths relative to ``root``); see the module docstring.

    ``format``: ``"video"``, ``"rawframes"`` or ``"flow"``. ``backend``: ``"auto"`` (PyAV, falling back to
    OpenCV per file, as training with ``data.backend: auto``), ``"pyav"``, ``"decord"`` or ``"opencv"``;
    frame and flow folders always use ``"rawframes"``. ``new_length``: consecutive frames (flow pairs) read
    per segment, as ``data.new_length``. Returns every problem, in list order, then line order.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    entries: list[tuple[str, VideoRecord]] = []
    problems: list[Problem] = []
    for list_path in list_paths:
        records, bad_lines = scan_list(list_path, format, num_classes)
        entries.extend((str(list_path), record) for record in records)
        problems.extend(bad_lines)
    if entries:
        clips = ClipDataset([record for _, record in entries], root, format, backend, "test", num_segments,
                            new_length, _NO_TRANSFORM, num_clips=num_clips, on_error="raise")
        # batch_size=None: one reason string per entry, in entry order.
        loader = DataLoader(EntryCheck(clips), batch_size=None, num_workers=workers, collate_fn=_keep)
        bar = tqdm(loader, total=len(entries), unit="video", desc="check", disable=not progress)
        for (list_path, record), reason in zip(entries, bar):
            if reason:
                problems.append(Problem(list_path, record.line, record.path, reason))
    order = {str(path): position for position, path in enumerate(list_paths)}
    problems.sort(key=lambda problem: (order[problem.list_path], problem.line))
    return CheckReport(len(entries), tuple(problems))


def _keep(reason: str) -> str:
    """Collate function: the worker's string as it is."""
    return reason


def write_problems_csv(problems: Sequence[Problem], csv_path: str | os.PathLike) -> None:
    """Write ``list_path,line,path,reason`` rows (header first), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PROBLEM_COLUMNS)
    writer.writerows(astuple(problem) for problem in problems)
    atomic_write_text(csv_path, buffer.getvalue())
