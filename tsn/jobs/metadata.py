"""Metadata of many videos at once (``tools/video_info.py``): probe each in a pool of processes, write a CSV."""

from __future__ import annotations

import csv
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from tsn.io.base import VideoReadError
from tsn.io.reader import probe


@dataclass(frozen=True)
class InfoRow:
    """One video's ``probe`` result, or the reason it failed (``error``; the other fields are then None/"")."""

    path: str
    height: int | None
    width: int | None
    num_frames: int | None
    fps: float | None
    backend: str
    error: str


INFO_COLUMNS = tuple(field.name for field in fields(InfoRow))


def probe_row(root: str, path: str, backend: str = "auto") -> InfoRow:
    """Probe ``root/path``; ``path`` is kept as given (relative to ``root``, as in a list)."""
    try:
        info = probe(os.path.join(root, path), backend)
    except VideoReadError as error:
        return InfoRow(path, None, None, None, None, "", error.reason)
    return InfoRow(path, info.height, info.width, info.num_frames, info.fps, info.backend, "")


def _probe_task(task: tuple[str, str, str]) -> InfoRow:
    return probe_row(*task)


def probe_rows(root: str | os.PathLike, paths: Sequence[str], backend: str = "auto", workers: int = 1,
               progress: bool = True) -> list[InfoRow]:
    """``InfoRow`` for every path (relative to ``root``), in the order given, with a tqdm bar.

    Each distinct path is probed once, in ``workers`` processes (spawned: decoders are not
    fork-safe; 1 = in this process). Unreadable videos give rows with ``error`` set, never an
    exception.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    distinct = list(dict.fromkeys(paths))
    tasks = [(os.fspath(root), path, backend) for path in distinct]
    with tqdm(total=len(tasks), unit="video", desc="probe", disable=not progress) as bar:
        if workers == 1 or len(tasks) <= 1:
            results = [_step(bar, probe_row(*task)) for task in tasks]
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context) as pool:
                results = [_step(bar, row) for row in pool.map(_probe_task, tasks)]
    row_of = dict(zip(distinct, results))
    return [row_of[path] for path in paths]


def _step(bar: tqdm, row: InfoRow) -> InfoRow:
    bar.update(1)
    return row


def write_info_csv(rows: Iterable[InfoRow], csv_path: str | os.PathLike) -> None:
    """Write ``rows`` as CSV with the header ``INFO_COLUMNS`` (empty cells for None), atomically."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = csv_path.with_name(f".{csv_path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(INFO_COLUMNS)
            writer.writerows(["" if value is None else value for value in astuple(row)] for row in rows)
        os.replace(temporary, csv_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
