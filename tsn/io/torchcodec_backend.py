"""torchcodec backend (the PyTorch team's decoder, optional: ``pip install 'tsn[torchcodec]'`` and FFmpeg's
shared libraries 4 to 8, e.g. ``apt-get install ffmpeg``).

Frame numbering is PyAV's: ``probe`` builds and verifies PyAV's ``FrameIndex`` (``tsn.io.pyav_backend.probe``)
and reads its last frame with torchcodec. Reads ask torchcodec for the frames *played at* the middle of
each wanted frame's display interval, by time, so that packets an MP4 edit list hides (which torchcodec
counts as frames) shift nothing, and every frame returned is checked against the index by its timestamp:
a frame that is not the one asked for is a ``VideoReadError``, never a shifted frame. torchcodec runs in
its "exact" mode, which scans the file's packets (no decoding) on each open, that is on every read: a
cost that grows with the video's length, yet smaller than handing it PyAV's index as
``custom_frame_mappings`` JSON (building and parsing the JSON cost more than the scan, even for a
27,000-frame video). Its "approximate" mode turns times into frame numbers by the average frame rate and missed two frames in three of a
variable-rate file here.

``read_sorted`` decodes on the CPU to numpy, as the other backends.

torchcodec is imported on first use: without it, choosing this backend raises ``BackendUnavailable``
naming what to install (never a skipped video).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from tsn.io import pyav_backend
from tsn.io.base import BackendUnavailable, VideoInfo, VideoReadError

NAME = "torchcodec"
INSTALL_HINT = ("pip install 'tsn[torchcodec]', and FFmpeg's shared libraries 4 to 8 (e.g. apt-get install "
                "ffmpeg) where the loader finds them")
# Returned timestamps equal the index's up to float rounding of ticks -> seconds.
_PTS_TOLERANCE_S = 1e-6
_ITER_CHUNK = 16
# Where inside the last frame to ask for it: well within any real frame's duration (1 ms: 1000 fps).
_LAST_FRAME_OFFSET_S = 1e-3
# Not a video: enough for a decoder to load its libraries and then refuse the input.
_TINY_CHECK = b"\x00" * 64


def _module() -> Any:
    """``torchcodec.decoders``; ``BackendUnavailable`` when torchcodec is not installed."""
    try:
        from torchcodec import decoders
    except (ImportError, OSError, RuntimeError) as error:
        raise BackendUnavailable(f"data.backend torchcodec: torchcodec cannot be imported ({_reason(error)}): "
                                 f"{INSTALL_HINT}") from None
    return decoders


def available() -> bool:
    """Whether torchcodec and FFmpeg libraries it can use load here (they load with the first decoder)."""
    try:
        decoders = _module()
        decoders.VideoDecoder(_TINY_CHECK, seek_mode="approximate")
    except BackendUnavailable:
        return False
    except (RuntimeError, ValueError, OSError) as error:
        return "load" not in str(error).lower()  # the core libraries failed, not the (bad) input
    return True


def _open(path: str, threads: int = 1, size: tuple[int, int] | None = None) -> Any:
    """A torchcodec decoder of ``path`` on the CPU giving (T, H, W, 3) frames, resized to ``size`` if given."""
    decoders = _module()
    transforms = None
    if size is not None:
        from torchcodec.transforms import Resize
        transforms = [Resize(size)]
    try:
        return decoders.VideoDecoder(path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=threads,
                                     transforms=transforms)
    except (RuntimeError, ValueError, OSError) as error:
        if "libtorchcodec" in str(error):  # its FFmpeg libraries were not found: nothing can be read
            raise BackendUnavailable(f"data.backend torchcodec: no FFmpeg libraries it can load: {INSTALL_HINT}") \
                from None
        raise VideoReadError(path, f"{NAME}: cannot open it: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def probe(path: str) -> VideoInfo:
    """PyAV's verified probe (frame count and index), and the last frame read by torchcodec and checked. The
    header's frame count torchcodec reports is not compared: it includes the packets an MP4 edit list hides.
    Refused (``VideoReadError``): open GOPs, and a last frame torchcodec does not return."""
    info = pyav_backend.probe(path)
    if info.index.open_gop:
        # measured: asked for frame 9 of an open GOP, its seek to the keyframe after it returned frame 12
        raise VideoReadError(path, f"{NAME}: open GOPs (frames shown before the keyframe they are decoded "
                                   f"after), which its seeks miss")
    info = VideoInfo(info.height, info.width, info.num_frames, info.fps, NAME, info.index)
    _frames_at(_open(path), path, np.array([info.num_frames - 1]), info)
    return info


def _seconds(info: VideoInfo, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the wanted frames' timestamps, times inside their display intervals to ask for), in seconds: the
    middle of the interval up to the next frame, and just after the start for the last frame, whose
    duration only the container knows (torchcodec refuses times past the stream's end)."""
    index = info.index
    stamps = index.stamps().astype(np.float64) * index.seconds_per_unit
    starts = stamps[indices]
    after_last = stamps[-1] + _LAST_FRAME_OFFSET_S
    asked = np.append((stamps[1:] + stamps[:-1]) / 2, after_last)[indices]
    return starts, asked


def _checked(path: str, indices: np.ndarray, expected: np.ndarray, got: np.ndarray) -> None:
    wrong = np.flatnonzero(np.abs(got - expected) > _PTS_TOLERANCE_S)
    if wrong.size:
        first = int(wrong[0])
        raise VideoReadError(path, f"{NAME}: asked for frame {int(indices[first])} (at {expected[first]:.6f} s), "
                                   f"got the frame at {got[first]:.6f} s")


def _frames_at(decoder: Any, path: str, indices: np.ndarray, info: VideoInfo) -> Any:
    """torchcodec's ``FrameBatch`` of frames ``indices``, each checked by its timestamp."""
    if info.index is None:
        raise VideoReadError(path, f"{NAME}: no frame index in the probe result")
    expected, middles = _seconds(info, indices)  # (T,), (T,) seconds
    try:
        batch = decoder.get_frames_played_at(middles.tolist())
    except (RuntimeError, ValueError, IndexError) as error:
        raise VideoReadError(path, f"{NAME}: frames {_span(indices)} do not decode: {_reason(error)}") from None
    _checked(path, indices, expected, batch.pts_seconds.double().numpy())
    return batch


def read_sorted(path: str, indices: np.ndarray, info: VideoInfo, size: tuple[int, int] | None = None,
                threads: int = 1) -> np.ndarray:
    """Frames at sorted, unique, in-range ``indices`` -> uint8 (T, H, W, 3) RGB on the CPU, at ``size`` if given
    (torchcodec's bilinear, antialiased resize)."""
    decoder = _open(path, threads, size)
    return _frames_at(decoder, path, indices, info).data.numpy()


def iter_frames(path: str, info: VideoInfo) -> Iterator[np.ndarray]:
    """Frames 0 .. info.num_frames - 1 in order, uint8 (H, W, 3) RGB, decoded a chunk at a time."""
    decoder = _open(path)
    for start in range(0, info.num_frames, _ITER_CHUNK):
        indices = np.arange(start, min(start + _ITER_CHUNK, info.num_frames))
        yield from _frames_at(decoder, path, indices, info).data.numpy()


def _span(indices: np.ndarray) -> str:
    if len(indices) <= 4:
        return ", ".join(str(int(i)) for i in indices)
    return f"{int(indices[0])}..{int(indices[-1])} ({len(indices)} frames)"
