"""What every reader backend shares: the probe result, the one error type, the frame-folder naming."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tsn.errors import UserError

# Frame folders as written by tools/extract_frames.py: 1-based names, so 0-based frame i is
# RAWFRAME_TEMPLATE.format(i + 1).
RAWFRAME_TEMPLATE = "img_{:05d}.jpg"
# Optical flow (x, y) of pair i (0-based: frame i to i + 1) as written by tools/extract_flow.py, the
# mmaction2 layout; the original TSN's extractor wrote ``flow_x_00001.jpg`` / ``flow_y_00001.jpg``.
FLOW_TEMPLATES = ("x_{:05d}.jpg", "y_{:05d}.jpg")
TSN_FLOW_TEMPLATES = ("flow_x_{:05d}.jpg", "flow_y_{:05d}.jpg")
# The endings (lower case) of the files taken for videos where a folder is searched for them.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv")


@dataclass(frozen=True, eq=False)
class FrameIndex:
    """Where frame ``i`` of a video file is: its timestamp, and the timestamps of the keyframes a seek can start at.

    Built once per video by its backend's ``probe`` (one pass over the packets, nothing decoded) and
    kept in its ``VideoInfo``, so that no read indexes the file again. Timestamps are in the
    backend's unit (stream ticks for PyAV, milliseconds for OpenCV), increasing: frame ``i`` is the
    ``i``-th frame a player shows. A regular stream (each frame one ``step`` after the previous, the
    usual constant frame rate) keeps only ``first`` and ``step``, a few bytes whatever its length:
    lists of 300,000 videos are probed by every loader worker.
    """

    count: int
    first: float
    step: float
    irregular: np.ndarray | None  # (count,) the timestamps when they are not regular, else None
    keyframes: np.ndarray  # (K,) the keyframes' timestamps, increasing
    seconds_per_unit: float  # what one timestamp unit is in seconds
    open_gop: bool = False  # some frames are shown before the keyframe they are decoded after

    @classmethod
    def of(cls, stamps: np.ndarray, keyframes: np.ndarray, seconds_per_unit: float,
           open_gop: bool = False) -> "FrameIndex":
        """From every frame's timestamp (increasing, (n,)), the keyframes' timestamps, the unit and
        whether GOPs are open (frames decoded after a keyframe but shown before it)."""
        stamps = np.asarray(stamps)
        steps = np.diff(stamps)
        regular = stamps.size < 2 or bool((steps == steps[0]).all())
        first = stamps[0].item() if stamps.size else 0
        step = steps[0].item() if stamps.size > 1 else 0
        return cls(count=int(stamps.size), first=first, step=step, irregular=None if regular else stamps.copy(),
                   keyframes=np.unique(np.asarray(keyframes)), seconds_per_unit=float(seconds_per_unit),
                   open_gop=open_gop)

    def stamps(self) -> np.ndarray:
        """Every frame's timestamp, (count,), in the dtype the index was built from."""
        if self.irregular is not None:
            return self.irregular
        return self.first + self.step * np.arange(self.count, dtype=np.asarray(self.step).dtype)


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` found: frame size, the number of frames that really decode, frame rate, backend.

    ``fps`` is 0.0 where it is unknown (a folder of frames has no frame rate). ``backend`` is the
    backend that produced the numbers (one of ``tsn.io.BACKENDS``) and reads every
    frame of this video: ``read`` with ``backend="auto"`` uses it, and never another one, so that a
    frame number means one frame in every call. ``index`` is the backend's ``FrameIndex`` where it
    keeps one (PyAV; OpenCV where its packets give one), so that reads need not index the file again;
    it takes no part in comparisons.
    """

    height: int
    width: int
    num_frames: int
    fps: float
    backend: str
    index: FrameIndex | None = field(default=None, compare=False, repr=False)


class VideoReadError(UserError, RuntimeError):
    """A video (file or frame folder) that cannot be read as asked; str() is ``"{path}: {reason}"``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuild from (path, reason), not from the formatted message, when sent between processes.
        return (type(self), (self.path, self.reason))


class BackendUnavailable(UserError, RuntimeError):
    """A reader backend that cannot run here (an optional package or library missing): a set-up problem,
    never a bad video, so it is raised, not skipped; str() names what to install."""
