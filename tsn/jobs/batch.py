"""One planner and one runner for the batch jobs that make one output per video: frame and flow folders
(``tsn.jobs.extract``) and training copies (``tsn.jobs.prepare``).

A job kind (``JobKind``) says what a video's output is called, when a finished one may be kept, and how one
is made; the rest is the same for every kind:

- ``plan_jobs``: every distinct video of the jobs once, refused before any decoding (a path that escapes the
  source root or cannot go into a list, a missing file, a second video with the same output, or what the kind
  refuses), skipped when its output is finished, else a task; hidden work files that killed runs left beside
  the outputs are removed.
- ``run_jobs``: the tasks in ``workers`` spawned processes (``tsn.runtime.pools.run_unordered``), failures
  collected, never raised; the summary in job order.

The command-line side (the jobs of a list or folder, the lists, the errors file, the exit status) is
``tsn.jobs.command``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Protocol, Sequence

import cv2
from tqdm import tqdm

from tsn.runtime.pools import run_unordered


@dataclass(frozen=True)
class ExtractJob:
    """One video for any batch job (frames, flow, training copies): ``video`` relative to the source root
    (``/``-separated, as in a list), its label."""
    video: str
    label: int


@dataclass(frozen=True)
class ExtractFailure:
    """A video that gave no output in any batch job, with the reason (``path`` as in the job)."""
    path: str
    reason: str


@dataclass(frozen=True)
class ListFile:
    """A list written from the finished jobs, ``OUT/[<list stem>_]<name>.txt``: a video list (``path label``)
    when ``extra_frames`` is None, else a rawframe list whose frame counts are the outputs' plus ``extra_frames``."""
    name: str
    extra_frames: int | None = 0


class JobKind(Protocol):
    """What one kind of job does to a video. Sent with every task to the worker processes, so it must pickle
    (a frozen dataclass of settings)."""

    @property
    def name(self) -> str:
        """The progress bar's label and the errors file's prefix: ``OUT/[<list stem>_]<name>_errors.csv``."""

    @property
    def verb(self) -> str:
        """What the summary line says was done: "extracted" ..."""

    @property
    def noun(self) -> str:
        """What one output is called in a failure reason: "frame folder" ..."""

    @property
    def lists(self) -> tuple[ListFile, ...]:
        """The lists the command writes; the first is named in the summary line."""

    def output_name(self, video: str) -> str:
        """The output of ``video`` (a job's path), relative to OUT, ``/``-separated."""

    def refusal(self, video: str, source: Path, output: Path) -> str:
        """Why the output ``output`` of ``video`` (at ``source``) must not be made, or "" to go on. Asked once the
        output is this video's: a later video with the same output is refused either way."""

    def completed(self, output: Path, source_size: int) -> int | None:
        """The frame count of ``output`` when it is finished, made with these settings from a source of this size;
        None to make it (again). Decodes nothing."""

    def make(self, source: str, output: str) -> tuple[int | None, str]:
        """Make ``output`` from ``source``: (its frame count, "") or (None, the reason it failed)."""

    def remove_work_files(self, folders: set[Path]) -> int:
        """Delete what killed runs left in ``folders`` (the outputs' parents); returns how many."""


@dataclass
class BatchSummary:
    """What a run did: outputs made, outputs already finished, one failure per failed distinct video, and
    ``finished``: (job, frame count) for every successful job, in job order (repeats kept)."""
    done: int = 0
    skipped_existing: int = 0
    failed: list[ExtractFailure] = field(default_factory=list)
    finished: list[tuple[ExtractJob, int]] = field(default_factory=list)

    def line(self, verb: str) -> str:
        """One line for the console."""
        return (f"{verb} {self.done} videos, {self.skipped_existing} already done, {len(self.failed)} failed; "
                f"{len(self.finished)} list entries")


@dataclass(frozen=True)
class _Task:
    """What a worker needs for one video (picklable)."""
    index: int
    kind: JobKind
    source: str
    output: str


@dataclass
class Plan:
    """Each distinct video of a job list once: its frame count (None while its task is to run) in ``frames_of``,
    or its failure in ``reason_of``; the tasks, ``task_videos[i]`` the video of ``tasks[i]``."""
    frames_of: dict[str, int | None] = field(default_factory=dict)
    reason_of: dict[str, str] = field(default_factory=dict)
    tasks: list[_Task] = field(default_factory=list)
    task_videos: list[str] = field(default_factory=list)
    skipped: int = 0


def folder_entries(folders: Iterable[Path]) -> Iterator[os.DirEntry]:
    """The entries of every folder of ``folders`` that exists (where killed runs may have left work files)."""
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        yield from entries


def read_marker(path: Path) -> tuple[dict, int] | None:
    """The JSON marker a finished output carries and the frame count it records; None when the file is missing,
    unreadable, not a JSON object, or records no positive frame count (the output is then made again)."""
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict):
        return None
    num_frames = marker.get("num_frames")
    if not isinstance(num_frames, int) or num_frames < 1:
        return None
    return marker, num_frames


def check_job(video: str, source: Path) -> str:
    """Reason why a job cannot be tried before any decoding, or "" when it can."""
    if PurePosixPath(video).is_absolute() or ".." in PurePosixPath(video).parts or video in ("", "."):
        return "path must be relative to the source root, without '..'"
    if video != video.strip() or "\n" in video or "\r" in video or video.startswith("#"):
        return "path cannot go into a list (surrounding spaces, a line break or a leading '#')"
    if not source.exists():
        return "file not found"
    if not source.is_file():
        return "not a file"
    return ""


def plan_jobs(kind: JobKind, src_root: Path, out_root: Path, jobs: Sequence[ExtractJob]) -> Plan:
    """The plan of ``jobs`` (module docstring); removes the work files killed runs left beside the outputs."""
    plan = Plan()
    owner_of: dict[str, str] = {}  # output (relative to OUT) -> the video it is made from
    for job in jobs:
        if job.video in plan.frames_of or job.video in plan.reason_of:
            continue
        source = src_root / job.video
        reason = check_job(job.video, source)
        name = kind.output_name(job.video) if not reason else ""
        if not reason and name in owner_of:
            reason = f"{kind.noun} {name} is already the target of {owner_of[name]}"
        if not reason:
            owner_of[name] = job.video
            reason = kind.refusal(job.video, source, out_root / name)
        if reason:
            plan.reason_of[job.video] = reason
            continue
        done = kind.completed(out_root / name, source.stat().st_size)
        plan.frames_of[job.video] = done
        if done is not None:
            plan.skipped += 1
        else:
            plan.tasks.append(_Task(len(plan.tasks), kind, str(source), str(out_root / name)))
            plan.task_videos.append(job.video)
    kind.remove_work_files({(out_root / name).parent for name in owner_of})
    return plan


def _work(task: _Task) -> tuple[int, int | None, str]:
    """Worker: one video. Returns (task index, frame count or None, failure reason or "")."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one video per process (resize, flow): the processes share the cores
    try:
        num_frames, reason = task.kind.make(task.source, task.output)
    finally:
        cv2.setNumThreads(threads)
    return task.index, num_frames, reason


def run_jobs(kind: JobKind, src_root: str | os.PathLike, out_root: str | os.PathLike, jobs: Sequence[ExtractJob],
             workers: int = 1, progress: bool = True) -> BatchSummary:
    """Make the output of every job's video ``src_root/<video>`` under ``out_root`` (``kind.output_name``).

    Finished outputs are skipped; each other distinct video is worked on once, by ``workers`` processes
    (spawned; 1 = in this process). ValueError for ``workers`` < 1.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    plan = plan_jobs(kind, Path(src_root), Path(out_root), jobs)
    summary = BatchSummary(skipped_existing=plan.skipped)
    with tqdm(total=len(plan.frames_of), initial=plan.skipped, unit="video", desc=kind.name,
              disable=not progress) as bar:
        for index, num_frames, reason in run_unordered(_work, plan.tasks, workers):
            video = plan.task_videos[index]
            if num_frames is None:
                del plan.frames_of[video]
                plan.reason_of[video] = reason
            else:
                plan.frames_of[video] = num_frames
                summary.done += 1
            bar.update(1)
    reported = set()
    for job in jobs:
        count = plan.frames_of.get(job.video)
        if count is not None:
            summary.finished.append((job, count))
        elif job.video not in reported:
            reported.add(job.video)
            summary.failed.append(ExtractFailure(job.video, plan.reason_of[job.video]))
    return summary
