"""Frames of a live source, as they come: a video file, a camera, or a network stream (``open_live``).

A camera is a device index (``0``) or a device path (``/dev/video0``), read by OpenCV; anything else (a
file, ``rtsp://``, ``http://``, ``udp://`` ...) is opened by PyAV (FFmpeg), which knows the network
protocols. Frames come as ``LiveFrame(time, rgb)``: seconds since the source's first frame (its timestamps
where it has them, else the arrival time) and an RGB uint8 ``(H, W, 3)`` array.

A source that cannot be opened is a ``LiveSourceError`` at once; one that breaks later ends the iteration
with a ``LiveSourceError`` naming the source and the reason, once.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from tsn.errors import UserError

_CAMERA = re.compile(r"^(\d+|/dev/video\d+)$")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class LiveSourceError(UserError, RuntimeError):
    """A live source that cannot be opened or read on: ``str()`` is ``"<source>: <reason>"`` on one line."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class LiveFrame:
    """One frame: seconds since the first frame, RGB uint8 ``(H, W, 3)``."""

    time: float
    rgb: np.ndarray


class LiveSource:
    """An open source: ``frames()`` yields ``LiveFrame`` until it ends; ``fps`` is its frame rate (0: unknown),
    ``is_file`` whether it is a file (which can be played at its own rate)."""

    def __init__(self, source: str, fps: float, is_file: bool, frames: Iterator[LiveFrame]) -> None:
        self.source = source
        self.fps = fps
        self.is_file = is_file
        self._frames = frames

    def frames(self) -> Iterator[LiveFrame]:
        return self._frames


def is_camera(source: str) -> bool:
    """Whether ``source`` names a camera: a device index or ``/dev/videoN``."""
    return bool(_CAMERA.match(source))


def open_live(source: str) -> LiveSource:
    """Open ``source`` (module docstring); ``LiveSourceError`` when it cannot be opened."""
    if is_camera(source):
        return _open_camera(source)
    if not _URL.match(source) and not Path(source).is_file():
        raise LiveSourceError(source, "no such file, camera or stream URL")
    return _open_pyav(source)


def _open_camera(source: str) -> LiveSource:
    import cv2

    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise LiveSourceError(source, "the camera cannot be opened (no such device, or it is in use)")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)

    def frames() -> Iterator[LiveFrame]:
        started = time.monotonic()
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    raise LiveSourceError(source, "the camera stopped giving frames")
                yield LiveFrame(time.monotonic() - started, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()

    return LiveSource(source, fps, False, frames())


def _open_pyav(source: str) -> LiveSource:
    import av

    try:
        container = av.open(source, timeout=10.0)
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise LiveSourceError(source, f"cannot open it ({error})") from None
    if not container.streams.video:
        container.close()
        raise LiveSourceError(source, "no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    fps = float(stream.average_rate or stream.base_rate or 0)
    is_file = not _URL.match(source) or source.lower().startswith("file:")

    def frames() -> Iterator[LiveFrame]:
        first: float | None = None
        started = time.monotonic()
        try:
            for frame in container.decode(stream):
                stamp = frame.time if frame.time is not None else time.monotonic() - started
                first = stamp if first is None else first
                yield LiveFrame(stamp - first, frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as error:
            raise LiveSourceError(source, f"the stream broke ({error})") from None
        finally:
            container.close()

    return LiveSource(source, fps, is_file, frames())
