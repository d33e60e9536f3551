"""Videos -> folders of JPEG frames (``img_00001.jpg`` ...) or of optical flow, resumable and safe to kill at any moment.

Layout: the video ``SRC/<rel>.<ext>`` becomes ``OUT/<rel>/img_00001.jpg ...`` (``RAWFRAME_TEMPLATE``), RGB frames
resized so that their short side is ``short_side`` (0 keeps the size) and written as JPEG with OpenCV. With
``FlowSettings`` it becomes ``OUT/<rel>/x_00001.jpg``, ``y_00001.jpg`` ... (``FLOW_TEMPLATES``, mmaction2's
layout): the flow of each pair of consecutive frames, computed on the resized frames and quantised by
``tsn.jobs.flow``, as grayscale JPEGs (and the RGB frames too with ``with_rgb``).

Crash safety (SIGKILL, power aside): a video is decoded in one sequential pass into the hidden sibling folder
``OUT/<parent>/.<name>.partial-<pid>``; when every frame is written, a completion marker ``.done`` (JSON: frame
count, settings, source size) goes in, and the folder is renamed to ``OUT/<rel>`` in one ``os.rename``. So
``OUT/<rel>`` either does not exist or is complete; a killed run leaves at most hidden ``.partial-``/``.stale-``
folders, which no list names and the next run removes. A rerun skips a video whose folder has a marker that
matches the current settings and source size and whose ``img_*.jpg`` (or ``x_``/``y_``) counts equal the marker's
(a stat and one directory listing, no decoding); anything else under ``OUT/<rel>`` is redone, except a folder
holding the other kind of output (frames where flow is asked for, or the reverse), which is reported as a
failure rather than deleted. Frames are not fsynced (that would
cost a disk flush per frame), so the guarantee covers a killed process, not a power cut.

Runs that share one OUT at the same time are not supported.

This module makes one video's folder (``FrameKind``); ``tsn.jobs.batch`` plans and runs a list of them, and
``tsn.jobs.command`` writes the lists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar, Iterable, Iterator, Sequence

import cv2
import numpy as np

from tsn.io import RAWFRAME_TEMPLATE, VIDEO_EXTENSIONS, VideoReadError, iter_frames
from tsn.io.base import FLOW_TEMPLATES
from tsn.jobs.batch import BatchSummary, ExtractJob, ListFile, folder_entries, read_marker, run_jobs
from tsn.jobs.flow import DEFAULT_BOUND, video_flow

MARKER_NAME = ".done"
# Hidden work folders next to the frame folders: ".<name>.partial-<pid>" (being written) and
# ".<name>.stale-<pid>" (an old folder moved aside before being deleted).
_WORK_DIR_RE = re.compile(r"^\..+\.(partial|stale)-\d+$")
_ANY_FRAME_RE = re.compile(r"^(img|x|y)_\d{5,}\.jpg$")


@dataclass(frozen=True)
class ExtractedVideo:
    """A video whose frames are complete: ``frame_dir`` relative to OUT (``/``-separated), frames, label."""
    frame_dir: str
    num_frames: int
    label: int


@dataclass
class ExtractSummary(BatchSummary):
    """``BatchSummary`` with ``extracted``, the finished frame folders in job order (repeats kept)."""
    extracted: list[ExtractedVideo] = field(default_factory=list)


def find_videos(root: str | os.PathLike) -> tuple[list[ExtractJob], list[str]]:
    """Every video file under ``root`` (by extension, case-insensitive; hidden entries skipped; symlinks followed).

    Returns jobs sorted by path and the class names. Folder-per-class convention: when every video sits inside a
    top-level folder, label = index of that folder's name among the sorted names of the top-level folders that
    hold videos, and the class names are those folders. When any video lies directly in ``root`` the collection
    is flat: every label is 0 and the class list is empty.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: source folder not found")
    videos = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                videos.append((rel_dir / name).as_posix())
    videos.sort()
    if any("/" not in v for v in videos):
        return [ExtractJob(v, 0) for v in videos], []
    classes = sorted({v.split("/", 1)[0] for v in videos})
    label_of = {name: i for i, name in enumerate(classes)}
    return [ExtractJob(v, label_of[v.split("/", 1)[0]]) for v in videos], classes


def frame_dir_name(video: str) -> str:
    """``a/b/c.mp4`` -> ``a/b/c``: the frame folder of a video, relative to OUT."""
    return PurePosixPath(video).with_suffix("").as_posix()


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    """(H,W,3) -> (h,w,3) with min(h,w) == short_side and the aspect ratio kept (rounded half up); 0 = unchanged."""
    height, width = frame.shape[:2]
    short = min(height, width)
    if short_side == 0 or short == short_side:
        return frame
    scale = short_side / short
    if height <= width:
        size = (max(1, int(width * scale + 0.5)), short_side)  # cv2 takes (width, height)
    else:
        size = (short_side, max(1, int(height * scale + 0.5)))
    # INTER_AREA averages when shrinking (no aliasing); it degenerates to nearest when enlarging.
    interpolation = cv2.INTER_AREA if short_side < short else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interpolation)


def encode_gray_jpeg(image: np.ndarray, quality: int) -> bytes:
    """Grayscale uint8 (H,W) -> JPEG bytes (one channel)."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {image.shape} image as JPEG")
    return buffer.tobytes()


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """RGB uint8 (H,W,3) -> JPEG bytes (OpenCV encodes BGR, so the channels are swapped first)."""
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {frame.shape} frame as JPEG")
    return buffer.tobytes()


@dataclass(frozen=True)
class FlowSettings:
    """Optical flow instead of (or beside, ``with_rgb``) the RGB frames: ``tsn.jobs.flow``'s ``method`` and ``bound``."""
    method: str = "dis"
    bound: float = DEFAULT_BOUND
    with_rgb: bool = False


def _marker(num_frames: int, short_side: int, quality: int, source_size: int,
            flow: FlowSettings | None = None) -> dict[str, object]:
    """What ``.done`` records. With ``flow``, ``num_frames`` counts the flow pairs (one fewer than the frames)."""
    marker: dict[str, object] = {"num_frames": num_frames, "short_side": short_side, "quality": quality,
                                 "source_size": source_size}
    if flow is not None:
        marker.update(flow=flow.method, bound=flow.bound, rgb=flow.with_rgb)
    return marker


def _counts(frame_dir: Path) -> dict[str, int]:
    """How many ``img_``, ``x_`` and ``y_`` JPEGs ``frame_dir`` holds (one directory listing)."""
    counts = {"img": 0, "x": 0, "y": 0}
    for entry in os.scandir(frame_dir):
        match = _ANY_FRAME_RE.match(entry.name)
        if match:
            counts[match.group(1)] += 1
    return counts


def completed_frames(frame_dir: str | os.PathLike, short_side: int, quality: int, source_size: int,
                     flow: FlowSettings | None = None) -> int | None:
    """Frame count (flow pairs with ``flow``) of a finished folder made with these settings from a source of
    this size, else None.

    Reads the marker and lists the folder once (the JPEG counts must match the marker's); decodes nothing.
    """
    frame_dir = Path(frame_dir)
    found = read_marker(frame_dir / MARKER_NAME)
    if found is None:
        return None
    marker, num_frames = found
    try:
        counts = _counts(frame_dir)
    except OSError:
        return None
    if flow is None:
        expected = {"img": num_frames, "x": 0, "y": 0}
        last = RAWFRAME_TEMPLATE.format(num_frames)
    else:
        expected = {"img": num_frames + 1 if flow.with_rgb else 0, "x": num_frames, "y": num_frames}
        last = FLOW_TEMPLATES[1].format(num_frames)
    if (counts != expected or marker != _marker(num_frames, short_side, quality, source_size, flow)
            or not (frame_dir / last).is_file()):
        return None
    return num_frames


def _other_kind(frame_dir: Path, flow: FlowSettings | None) -> str:
    """Why ``frame_dir`` must not be replaced: it holds the finished output of the other tool (frames where
    flow is asked for, or the reverse), which a redo would delete; "" otherwise."""
    try:
        marker = json.loads((frame_dir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(marker, dict) or ("flow" in marker) == (flow is not None):
        return ""
    if flow is None:
        return f"{frame_dir} holds optical flow (tools/extract_flow.py): write the frames to another --out"
    return (f"{frame_dir} holds frames (tools/extract_frames.py): write the flow to another --out, or frames and "
            f"flow together there with extract_flow.py --rgb after removing it")


def _rgb_files(frames: Iterable[np.ndarray], short_side: int, quality: int) -> Iterator[tuple[str, bytes]]:
    """RGB frames -> (file name, JPEG bytes): ``img_00001.jpg`` ..."""
    for number, frame in enumerate(frames, start=1):
        yield RAWFRAME_TEMPLATE.format(number), encode_jpeg(resize_short_side(frame, short_side), quality)


def _flow_files(frames: Iterable[np.ndarray], short_side: int, quality: int,
                flow: FlowSettings) -> Iterator[tuple[str, bytes]]:
    """RGB frames -> (file name, JPEG bytes): ``x_00001.jpg``, ``y_00001.jpg`` per pair (and ``img_`` frames
    when ``flow.with_rgb``), the flow computed on the frames resized to ``short_side``."""
    resized = (resize_short_side(frame, short_side) for frame in frames)
    for number, (frame, x, y) in enumerate(video_flow(resized, flow.method, flow.bound), start=1):
        if flow.with_rgb:
            yield RAWFRAME_TEMPLATE.format(number), encode_jpeg(frame, quality)
        if x is not None and y is not None:
            yield FLOW_TEMPLATES[0].format(number), encode_gray_jpeg(x, quality)
            yield FLOW_TEMPLATES[1].format(number), encode_gray_jpeg(y, quality)


def write_frames(frames: Iterable[np.ndarray], frame_dir: str | os.PathLike, short_side: int, quality: int,
                 source: str, source_size: int, flow: FlowSettings | None = None) -> int:
    """Write RGB frames (H,W,3) as ``frame_dir/img_00001.jpg ...`` (with ``flow``: the flow pairs ``x_00001.jpg``,
    ``y_00001.jpg`` ..., and the frames when ``flow.with_rgb``) atomically; returns the number of frames
    (with ``flow``: of flow pairs) written.

    Files go to a hidden ``.partial-<pid>`` sibling that is renamed to ``frame_dir`` only once complete (with its
    marker); whatever was at ``frame_dir`` before is replaced. Any error (e.g. ``VideoReadError`` half way through
    ``frames``) removes the partial folder and propagates; ``frame_dir`` is then left as it was. No frame at all
    (with ``flow``: fewer than two) raises ``VideoReadError(source, ...)``.
    """
    frame_dir = Path(frame_dir)
    frame_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = frame_dir.parent / f".{frame_dir.name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        files = _rgb_files(frames, short_side, quality) if flow is None else \
            _flow_files(frames, short_side, quality, flow)
        written = {"img": 0, "x": 0, "y": 0}
        for name, data in files:
            (partial / name).write_bytes(data)
            written[name.split("_", 1)[0]] += 1
        num_frames = written["img"] if flow is None else written["x"]
        if num_frames == 0:
            raise VideoReadError(source, "no frame decodes" if flow is None else "fewer than two frames decode: no flow")
        marker = _marker(num_frames, short_side, quality, source_size, flow)
        (partial / MARKER_NAME).write_text(json.dumps(marker, sort_keys=True) + "\n")
        _replace_dir(partial, frame_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return num_frames


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is first moved aside in one rename, then deleted.

    Moving aside first means a kill can never leave a half-deleted folder that still carries its marker.
    """
    if not (target.exists() or target.is_symlink()):
        os.rename(new, target)
        return
    stale = target.parent / f".{target.name}.stale-{os.getpid()}"
    _remove(stale)
    os.rename(target, stale)
    os.rename(new, target)
    _remove(stale)


def _remove(path: Path) -> None:
    """Delete a folder tree, a file or a link at ``path``; nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_work_dirs(folders: Iterable[Path]) -> int:
    """Delete the hidden ``.partial-``/``.stale-`` folders left in ``folders`` by killed runs; returns how many.

    Only the given folders are listed (the parents of the frame folders), never the frame folders themselves.
    """
    removed = 0
    for entry in folder_entries(folders):
        if _WORK_DIR_RE.match(entry.name) and entry.is_dir(follow_symlinks=False):
            # ignore_errors: a worker orphaned by a killed run may still be writing there; what is left stays
            # hidden and unnamed by any list.
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    return removed


@dataclass(frozen=True)
class FrameKind:
    """The ``tsn.jobs.batch.JobKind`` of frame folders: ``OUT/<video without extension>/`` holding the frames
    resized to ``short_side`` as JPEGs of ``quality``, or with ``flow`` the flow pairs (and the frames when
    ``flow.with_rgb``; the frame count is then the pair count). ValueError for settings out of range."""
    short_side: int = 256
    quality: int = 95
    backend: str = "auto"
    flow: FlowSettings | None = None
    verb: ClassVar[str] = "extracted"
    noun: ClassVar[str] = "frame folder"

    def __post_init__(self) -> None:
        if self.short_side < 0:
            raise ValueError(f"short_side must be >= 0, got {self.short_side}")
        if not 0 <= self.quality <= 100:
            raise ValueError(f"quality must be in 0..100, got {self.quality}")

    @property
    def name(self) -> str:
        return "extract" if self.flow is None else "flow"

    @property
    def lists(self) -> tuple[ListFile, ...]:
        """The frame folders' list, or the flow list and, with the frames too, their list (one frame more)."""
        if self.flow is None:
            return (ListFile("rawframes"),)
        return (ListFile("flow"),) + ((ListFile("rawframes", 1),) if self.flow.with_rgb else ())

    def output_name(self, video: str) -> str:
        return frame_dir_name(video)

    def refusal(self, video: str, source: Path, output: Path) -> str:
        # A video without extension extracted into its own source tree would be replaced by its frames.
        if frame_dir_name(video) == video and output.resolve() == source.resolve():
            return "its frame folder would replace the video itself (no file extension and --out is --src)"
        return _other_kind(output, self.flow)

    def completed(self, output: Path, source_size: int) -> int | None:
        return completed_frames(output, self.short_side, self.quality, source_size, self.flow)

    def make(self, source: str, output: str) -> tuple[int | None, str]:
        try:
            source_size = os.stat(source).st_size
            return write_frames(iter_frames(source, backend=self.backend), output, self.short_side, self.quality,
                                source, source_size, self.flow), ""
        except VideoReadError as error:
            return None, error.reason

    def remove_work_files(self, folders: set[Path]) -> int:
        return remove_work_dirs(folders)


def extract_frames(src_root: str | os.PathLike, out_root: str | os.PathLike, jobs: Sequence[ExtractJob],
                   short_side: int = 256, quality: int = 95, workers: int = 1, backend: str = "auto",
                   progress: bool = True, flow: FlowSettings | None = None) -> ExtractSummary:
    """Extract every job's video ``src_root/<video>`` to ``out_root/<video without extension>/``: its frames, or
    with ``flow`` its flow pairs (and frames when ``flow.with_rgb``; ``ExtractedVideo.num_frames`` then counts
    the flow pairs).

    Finished folders (see ``completed_frames``) are skipped; hidden work folders of killed runs are removed first.
    Each distinct video is decoded once, in one sequential pass, by ``workers`` processes (spawned; 1 = in this
    process). Failures (``VideoReadError``, missing file, two videos mapping to one frame folder, a folder holding
    the other kind of output) are collected, never raised (``tsn.jobs.batch``). ``extracted`` lists the successful
    jobs in job order, labels untouched. ValueError for settings out of range or ``workers`` < 1.
    """
    run = run_jobs(FrameKind(short_side, quality, backend, flow), src_root, out_root, jobs, workers, progress)
    extracted = [ExtractedVideo(frame_dir_name(job.video), count, job.label) for job, count in run.finished]
    return ExtractSummary(run.done, run.skipped_existing, run.failed, run.finished, extracted)
