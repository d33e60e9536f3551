"""Videos -> training copies: small MP4 files with regular keyframes, the same frames, resumable and safe to kill.

Layout: the video ``SRC/<rel>.<ext>`` becomes ``OUT/<rel>.mp4``: video only, encoded by PyAV's bundled encoders
(``libx264`` for ``h264``, ``libx265`` for ``hevc``; no system FFmpeg needed), yuv420p, quality ``crf``, frames
resized so that their short side is ``short_side`` (0 keeps the size) and cropped by one row or column where a
side is odd (4:2:0 chroma needs even sizes). Frame ``i`` of the copy is frame ``i`` of the source as
``tsn.io.iter_frames`` numbers it, stamped ``i / rate`` (constant frame rate, ``source_rate``), and the copy's
frame count is checked against the number of frames decoded from the source (``tsn.io.probe`` with PyAV, which
decodes the last frame). Keyframes are exactly frames 0, k, 2k ... (``keyframe_interval`` k; 1 = all intra):
closed GOPs, no scene-cut keyframes. Between them, up to ``bframes`` B-frames that no other frame refers to
(no B-pyramid): they make the copies smaller, and the PyAV reader skips the unwanted ones without decoding
them. Encoding runs on one thread (``workers`` processes share the cores). The bytes are not reproducible:
libx264 gave a few different bytes in one copy of twelve in about one process of sixteen here, with the same
frames. Frames keep the coded orientation the readers give (a display rotation is not carried over).

Crash safety (SIGKILL, power aside): a video is encoded into the hidden sibling ``OUT/<parent>/.<stem>.partial-
<pid>.mp4``, its frames are counted, it is fsynced, and then, in this order: (1) the old marker
``OUT/<parent>/.<stem>.mp4.done`` is deleted, (2) the partial file is renamed to ``OUT/<rel>.mp4`` with one
``os.replace``, (3) the new marker (JSON: frame count, settings, source size, copy size) is written atomically.
A marker is thus only ever written once the file it describes is in place, and removed before that file is
replaced: a marker that matches the settings and sizes means the copy beside it is complete. A kill leaves a
copy without marker (redone), an old copy without marker (redone), or hidden ``.partial-`` and marker
``.tmp`` files, which no list names and the next run removes. A rerun skips a video whose marker matches the
current settings and source size and whose copy has the size the marker records (two stats and a small read,
no decoding); anything else is redone. A redo that fails leaves the old copy and marker as they were.

Runs that share one OUT at the same time are not supported. The list is written by the caller
(``tools/prepare_videos.py``), as for ``tsn.jobs.extract``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import ClassVar, Iterable, Iterator, Sequence

import av
import numpy as np

from tsn.fileio import atomic_write_text
from tsn.io import VideoReadError, iter_frames, probe
from tsn.jobs.batch import BatchSummary, ExtractJob, ListFile, folder_entries, read_marker, run_jobs
from tsn.jobs.extract import frame_dir_name, resize_short_side

# --codec -> PyAV's encoder; both take CRF, an exact keyframe interval and non-reference B-frames.
CODECS = {"h264": "libx264", "hevc": "libx265"}
MAX_CRF = 51
MAX_BFRAMES = 16
# x264's and x265's presets, fastest first
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# Bumped whenever the encoding changes in a way the settings do not show, so that old copies are redone.
FORMAT_VERSION = 1
_PARTIAL_RE = re.compile(r"^\..+\.partial-\d+\.mp4$")
# What tsn.fileio.atomic_write leaves of a marker when killed: ".<marker name>.<pid>.<uuid hex>.tmp".
_MARKER_TMP_RE = re.compile(r"^\.\..+\.done\.\d+\.[0-9a-f]{32}\.tmp$")
# The nominal rate (r_frame_rate) is taken when it is this close to the average: a constant-rate stream whose
# duration is slightly off (a clip of 324 frames declared 25 fps, averaging 8100/323).
_RATE_TOLERANCE = 0.01


@dataclass(frozen=True)
class PrepareSettings:
    """How copies are encoded: short side (0 keeps the size), keyframe interval, codec (``CODECS``), CRF, B-frames,
    encoder preset (``PRESETS``)."""
    short_side: int = 256
    keyframe_interval: int = 16
    codec: str = "h264"
    crf: int = 23
    bframes: int = 3
    # x264/x265 speed against size: training copies are made once and read many times
    preset: str = "medium"

    def check(self) -> None:
        """ValueError naming the first setting out of range."""
        if self.short_side < 0 or self.short_side == 1:
            raise ValueError(f"short_side must be 0 or >= 2, got {self.short_side}")
        if self.keyframe_interval < 1:
            raise ValueError(f"keyframe_interval must be >= 1, got {self.keyframe_interval}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        if not 0 <= self.crf <= MAX_CRF:
            raise ValueError(f"crf must be in 0..{MAX_CRF}, got {self.crf}")
        if not 0 <= self.bframes <= MAX_BFRAMES:
            raise ValueError(f"bframes must be in 0..{MAX_BFRAMES}, got {self.bframes}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")


@dataclass(frozen=True)
class PreparedVideo:
    """A finished copy: ``video`` relative to OUT (``/``-separated, ``.mp4``), its frame count, its label."""
    video: str
    num_frames: int
    label: int


@dataclass
class PrepareSummary(BatchSummary):
    """``BatchSummary`` with ``prepared``, the finished copies in job order (repeats kept)."""
    prepared: list[PreparedVideo] = field(default_factory=list)


def copy_name(video: str) -> str:
    """``a/b/c.avi`` -> ``a/b/c.mp4``: the copy of a video, relative to OUT."""
    return frame_dir_name(video) + ".mp4"


def marker_path(target: Path) -> Path:
    """``OUT/a/c.mp4`` -> ``OUT/a/.c.mp4.done``: the hidden completion marker beside a copy."""
    return target.parent / f".{target.name}.done"


def source_rate(path: str) -> Fraction | None:
    """The frame rate a copy of ``path`` is stamped with, exact, from PyAV's header (nothing decoded): the
    stream's nominal rate when it lies within 1 % of its average rate, else the average (a variable-rate clip
    keeps its duration). None where PyAV cannot open the file or finds no rate."""
    average = guessed = None
    try:
        with av.open(path) as container:
            if container.streams.video:
                stream = container.streams.video[0]
                average, guessed = stream.average_rate, stream.guessed_rate
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        return None
    rates = [Fraction(rate) for rate in (guessed, average) if rate]
    if len(rates) == 2 and abs(rates[0] - rates[1]) > _RATE_TOLERANCE * rates[1]:
        return rates[1]
    return rates[0] if rates else None


def even_frame(frame: np.ndarray, short_side: int) -> np.ndarray:
    """RGB (H,W,3) -> (h,w,3) with the short side ``short_side`` (0 keeps the size), then the last row and/or
    column dropped where h or w is odd: cropping one line moves nothing, a second resize would blur."""
    frame = resize_short_side(frame, short_side)
    height, width = frame.shape[:2]
    return frame[:height - height % 2, :width - width % 2]


def _encoder_options(settings: PrepareSettings) -> dict[str, str]:
    """The encoder's private options: CRF, keyframes exactly every ``keyframe_interval`` frames, one thread."""
    interval, bframes = settings.keyframe_interval, settings.bframes
    # scenecut=0: no extra keyframes at cuts; open-gop=0: every keyframe starts a GOP that needs nothing before
    # it; b-pyramid off: B-frames are never references, so a reader skips them unless it wants them.
    common = f"keyint={interval}:min-keyint={interval}:scenecut=0:open-gop=0:bframes={bframes}:log-level=error"
    if settings.codec == "h264":
        params = {"x264-params": f"{common}:b-pyramid=none:threads=1"}
    else:
        params = {"x265-params": f"{common}:b-pyramid=0:pools=none:frame-threads=1"}
    return {"crf": str(settings.crf), "preset": settings.preset, **params}


def encode_video(frames: Iterable[np.ndarray], path: str | os.PathLike, rate: Fraction,
                 settings: PrepareSettings, source: str = "") -> int:
    """Encode RGB uint8 (H,W,3) frames, in order, into the MP4 file ``path`` (created or overwritten): frame i at
    time i / ``rate``, resized by ``even_frame``. Returns how many frames went in.

    Raises ``VideoReadError(source, ...)`` when there is no frame or a frame changes size (and whatever
    ``frames`` raises), ``av.FFmpegError`` when the encoder fails; ``path`` is then left half written.
    """
    iterator: Iterator[np.ndarray] = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise VideoReadError(source, "no frame decodes")
    first = even_frame(first, settings.short_side)
    height, width = first.shape[:2]
    count = 0
    with av.open(os.fspath(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream(CODECS[settings.codec], rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        codec = stream.codec_context
        codec.gop_size = settings.keyframe_interval
        codec.max_b_frames = settings.bframes
        codec.thread_count = 1
        stream.options = _encoder_options(settings)
        time_base = 1 / rate
        resized = first
        while resized is not None:
            if resized.shape[:2] != (height, width):
                raise VideoReadError(source, f"frame {count} is {resized.shape[1]}x{resized.shape[0]} after "
                                             f"resizing, frame 0 was {width}x{height}")
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(resized), format="rgb24")
            picture.pts, picture.time_base = count, time_base
            container.mux(stream.encode(picture))
            count += 1
            following = next(iterator, None)
            resized = None if following is None else even_frame(following, settings.short_side)
        container.mux(stream.encode(None))
    return count


def _marker(settings: PrepareSettings, num_frames: int, source_size: int, output_size: int) -> dict[str, object]:
    """What the marker records."""
    return {"version": FORMAT_VERSION, "codec": settings.codec, "crf": settings.crf,
            "keyframe_interval": settings.keyframe_interval, "short_side": settings.short_side,
            "bframes": settings.bframes, "preset": settings.preset, "num_frames": num_frames, "source_size": source_size,
            "output_size": output_size}


def completed_copy(target: str | os.PathLike, settings: PrepareSettings, source_size: int) -> int | None:
    """Frame count of a finished copy ``target`` made with these settings from a source of this size, else None.

    Reads the marker and stats the copy (its size must be the marker's); decodes nothing.
    """
    target = Path(target)
    found = read_marker(marker_path(target))
    if found is None:
        return None
    marker, num_frames = found
    try:
        output_size = target.stat().st_size if target.is_file() else -1
    except OSError:
        return None
    if marker != _marker(settings, num_frames, source_size, output_size):
        return None
    return num_frames


def prepare_video(source: str, target: str | os.PathLike, settings: PrepareSettings, backend: str = "auto") -> int:
    """Make the copy ``target`` of the video ``source`` (see the module docstring); returns its frame count.

    Raises ``VideoReadError`` for a source that does not decode or declares no frame rate, or a copy whose frame
    count differs from the frames decoded, ``av.FFmpegError`` when the encoder fails; ``target`` and its marker
    are then left as they were and no partial file stays behind.
    """
    target = Path(target)
    frames = iter_frames(source, backend)  # probes: an unreadable video fails here, before any file is made
    rate = source_rate(source)
    if rate is None:  # a file only OpenCV reads: its float rate, 29.97... taken as 30000/1001
        fps = probe(source, backend).fps
        if fps <= 0:
            raise VideoReadError(source, "the video declares no frame rate")
        rate = Fraction(fps).limit_denominator(1001)
    source_size = os.stat(source).st_size
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.stem}.partial-{os.getpid()}.mp4"
    marker = marker_path(target)
    try:
        num_frames = encode_video(frames, partial, rate, settings, source)
        written = probe(partial, "pyav").num_frames
        if written != num_frames:
            raise VideoReadError(source, f"the copy has {written} frames, {num_frames} were decoded")
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())  # the data is on disk before a marker can vouch for it
        marker.unlink(missing_ok=True)  # (1) no marker may describe the file about to be replaced
        os.replace(partial, target)  # (2)
        output = _marker(settings, num_frames, source_size, target.stat().st_size)
        atomic_write_text(marker, json.dumps(output, sort_keys=True) + "\n")  # (3)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return num_frames


def is_work_file(name: str) -> bool:
    """Whether a file name is one of the hidden work files a killed run leaves (``remove_work_files``)."""
    return bool(_PARTIAL_RE.match(name) or _MARKER_TMP_RE.match(name))


def remove_work_files(folders: Iterable[Path]) -> int:
    """Delete the hidden ``.partial-`` copies and marker ``.tmp`` files killed runs left in ``folders``; returns
    how many. Only the given folders are listed (the parents of the copies)."""
    removed = 0
    for entry in folder_entries(folders):
        if is_work_file(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue  # an orphaned worker of a killed run finished it meanwhile
            removed += 1
    return removed


@dataclass(frozen=True)
class CopyKind:
    """The ``tsn.jobs.batch.JobKind`` of training copies: ``OUT/<video with .mp4>`` made with ``settings``, the
    source read by ``backend``. ValueError for settings out of range."""
    settings: PrepareSettings = PrepareSettings()
    backend: str = "auto"
    name: ClassVar[str] = "prepare"
    verb: ClassVar[str] = "prepared"
    noun: ClassVar[str] = "copy"
    lists: ClassVar[tuple[ListFile, ...]] = (ListFile("prepared", None),)

    def __post_init__(self) -> None:
        self.settings.check()

    def output_name(self, video: str) -> str:
        return copy_name(video)

    def refusal(self, video: str, source: Path, output: Path) -> str:
        if output.resolve() == source.resolve():
            return "its copy would replace the video itself (--out is --src)"
        return ""

    def completed(self, output: Path, source_size: int) -> int | None:
        return completed_copy(output, self.settings, source_size)

    def make(self, source: str, output: str) -> tuple[int | None, str]:
        try:
            return prepare_video(source, output, self.settings, self.backend), ""
        except VideoReadError as error:
            return None, error.reason
        except av.FFmpegError as error:
            return None, f"encoder: {error}"
        except OSError as error:  # the copy cannot be written (a folder in its place, a full disk ...)
            return None, str(error)

    def remove_work_files(self, folders: set[Path]) -> int:
        return remove_work_files(folders)


def prepare_videos(src_root: str | os.PathLike, out_root: str | os.PathLike, jobs: Sequence[ExtractJob],
                   settings: PrepareSettings = PrepareSettings(), workers: int = 1, backend: str = "auto",
                   progress: bool = True) -> PrepareSummary:
    """Copy every job's video ``src_root/<video>`` to ``out_root/<video with .mp4>`` (module docstring).

    Finished copies (``completed_copy``) are skipped; work files of killed runs are removed first. Each
    distinct video is decoded once, by ``workers`` processes (spawned; 1 = in this process). Failures (an
    unreadable video, a frame count that changes, a missing file, two videos with one copy, a copy that would
    replace its source) are collected, never raised (``tsn.jobs.batch``). ``prepared`` lists the successful jobs
    in job order, labels untouched. ValueError for settings out of range or ``workers`` < 1.
    """
    run = run_jobs(CopyKind(settings, backend), src_root, out_root, jobs, workers, progress)
    prepared = [PreparedVideo(copy_name(job.video), count, job.label) for job, count in run.finished]
    return PrepareSummary(run.done, run.skipped_existing, run.failed, run.finished, prepared)
