"""The command-line side of the batch jobs (``tools/extract_frames.py``, ``extract_flow.py``, ``prepare_videos.py``):
the jobs of a list or of a folder, the run (``tsn.jobs.batch``), the lists, the errors file, the summary line and
the exit status."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Sequence

from tsn.data.lists import ListFormatError, VideoRecord, read_video_list, write_class_names, write_rawframe_list, \
    write_video_list
from tsn.fileio import atomic_write_text
from tsn.jobs.batch import BatchSummary, ExtractFailure, ExtractJob, JobKind, run_jobs
from tsn.jobs.extract import find_videos


def source_jobs(src: Path, list_file: Path | None, out: Path) -> tuple[list[ExtractJob], str]:
    """The videos to work on and the prefix of the output lists: the list's videos and ``"<list stem>_"``,
    or every video under ``src`` labelled by its top-level folder (its names written to ``out/classes.txt``)
    and ``""``. Raises ``ListFormatError``/``OSError``/``ValueError`` for a bad list or folder."""
    if list_file is not None:
        return [ExtractJob(record.path, record.label) for record in read_video_list(list_file)], f"{list_file.stem}_"
    jobs, classes = find_videos(src)
    if classes:
        write_class_names(classes, out / "classes.txt")
    return jobs, ""


def failures_csv(failures: Sequence[ExtractFailure]) -> str:
    """CSV text ``path,reason`` (header line first), one row per failure."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows([failure.path, failure.reason] for failure in failures)
    return buffer.getvalue()


def report_failures(failures: Sequence[ExtractFailure], errors_path: Path) -> None:
    """Write ``errors_path`` (CSV ``path,reason``, header only when none failed) and print each failure."""
    atomic_write_text(errors_path, failures_csv(failures))
    for failure in failures:
        print(f"failed: {failure.path}: {failure.reason}", file=sys.stderr)


def write_lists(kind: JobKind, summary: BatchSummary, out: Path, stem: str) -> list[Path]:
    """Write ``kind.lists`` of the finished jobs under ``out``; returns their paths."""
    paths = []
    for listed in kind.lists:
        path = out / f"{stem}{listed.name}.txt"
        if listed.extra_frames is None:
            write_video_list([VideoRecord(kind.output_name(job.video), job.label) for job, _ in summary.finished],
                             path)
        else:
            write_rawframe_list([VideoRecord(kind.output_name(job.video), job.label, count + listed.extra_frames)
                                 for job, count in summary.finished], path)
        paths.append(path)
    return paths


def run_command(kind: JobKind, src: Path, out: Path, list_file: Path | None, workers: int, progress: bool,
                strict: bool) -> int:
    """A tool's whole run: the jobs (``source_jobs``), their outputs, the lists, the errors file and the summary
    line. Returns the exit status: 0, 1 when ``strict`` and a video failed, 2 after printing ``error: ...`` for
    a missing ``src`` folder or a bad list."""
    if not src.is_dir():
        print(f"error: --src {src}: not a folder", file=sys.stderr)
        return 2
    try:
        jobs, stem = source_jobs(src, list_file, out)
    except (ListFormatError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = run_jobs(kind, src, out, jobs, workers, progress)
    paths = write_lists(kind, summary, out, stem)
    report_failures(summary.failed, out / f"{stem}{kind.name}_errors.csv")
    print(f"{summary.line(kind.verb)} -> {paths[0]}")
    return 1 if strict and summary.failed else 0
