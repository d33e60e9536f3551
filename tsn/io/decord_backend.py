"""decord backend: random access by decord's own frame index (built from the container's packets).

Memory: decord ``VideoReader`` objects are known to leak (decord issues 157 and 208), so every call
opens its own reader and deletes it before returning; nothing here keeps a reader between calls.
Threads: ``read_sorted`` takes the number of decoding threads (default 1; the Dataset gives each
decoding process its share of the CPUs, see ``tsn.data.dataset.decoder_threads``); decord's own
default (0: FFmpeg picks) oversubscribes the CPUs when several loader workers decode at once.

Decoding at a reduced size: ``read_sorted(..., size=(h, w))`` makes decord's decoder scale every
frame (FFmpeg's swscale, an area-aware bicubic filter) while converting it to RGB. decord converts
every frame it decodes, also the ones it only decodes on the way to a wanted frame, so a small
output saves that conversion on all of them.

Frames always come through ``get_batch``: for frames 48 or 72 pixels wide ``VideoReader[i]`` and
``next()`` silently return 4-channel garbage, while ``get_batch`` raises ("The size must exactly
match"), so that such a file is refused at ``probe`` (``"auto"`` reads it with PyAV or OpenCV).
"""

from __future__ import annotations

import re
from typing import Iterator

import decord
import numpy as np

from tsn.io import pyav_backend
from tsn.io.base import VideoInfo, VideoReadError

NAME = "decord"
# Frames per get_batch call when decoding a whole video: bounds memory (8 frames of 1080p = 50 MB).
_ITER_CHUNK = 8
# decord prefixes messages with "[hh:mm:ss] /path/to/source.cc:123: ", sometimes twice.
_LOCATION = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")
# ... and often with the failed C++ check: "Check failed: <expression> (-1094995529 vs. 0) ".
_CHECK = re.compile(r"Check failed: .*? \(-?\d+ vs\. -?\d+\) ")
_ERRORS = (decord.DECORDError, RuntimeError)


def _reason(error: BaseException) -> str:
    """decord's exception -> one short line."""
    lines = str(error).strip().splitlines()
    text = _CHECK.sub("", _LOCATION.sub("", lines[0])).strip().rstrip(".") if lines else ""
    if text.startswith("Error reading "):
        # decord puts FFmpeg's actual reason on stderr only.
        return "cannot open it (not a video, or a damaged container)"
    return text or type(error).__name__


def _open(path: str, threads: int = 1, size: tuple[int, int] | None = None) -> decord.VideoReader:
    """A reader with ``threads`` decoding threads, giving frames of ``size`` (height, width) or full size."""
    height, width = size if size is not None else (-1, -1)
    try:
        return decord.VideoReader(path, num_threads=threads, width=width, height=height)
    except _ERRORS as error:
        raise VideoReadError(path, f"{NAME}: {_reason(error)}") from None


def _batch(reader: decord.VideoReader, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` as uint8 (T, H, W, 3) RGB; decoder errors propagate as decord raised them."""
    frames = reader.get_batch(indices).asnumpy()
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[3] != 3:
        raise decord.DECORDError(f"returned frames of shape {frames.shape} for {len(indices)} frames")
    return frames


def timestamps_usable(starts: np.ndarray) -> bool:
    """Whether decord's frame start times (seconds, (n,)) are finite and strictly increasing.

    decord finds a frame by its timestamp; where the container has none (AV_NOPTS_VALUE, as in
    some AVIs, H.264 in AVI among them) its index holds -3e17 or repeats, and a seek returns a
    neighbouring frame at random (frame 101 for frame 102 in 1 of 6 tries on a real 1080p AVI).
    """
    return bool(np.isfinite(starts).all() and (np.diff(starts) > 0).all())


def _checked_header(path: str, reader: decord.VideoReader) -> tuple[int, float]:
    """(frames in decord's index, fps) of an open reader; VideoReadError for no frames, unusable
    timestamps, or an index that is not the frames the video shows (``matches_shown_frames``)."""
    claimed = len(reader)
    fps = float(reader.get_avg_fps())
    if claimed < 1:
        raise VideoReadError(path, f"{NAME}: no video frames")
    starts = reader.get_frame_timestamp(np.arange(claimed))[:, 0]  # (claimed,) seconds
    if not timestamps_usable(starts):
        raise VideoReadError(path, f"{NAME}: its frame index lacks increasing timestamps (seeks could "
                                   f"return the wrong frame)")
    matches_shown_frames(path, starts)
    return claimed, fps if np.isfinite(fps) and fps > 0 else 0.0


def matches_shown_frames(path: str, starts: np.ndarray) -> None:
    """Refuse a file whose decord index (frame start times in seconds, (n,)) is not the frames it shows.

    decord numbers every packet, also those an MP4 edit list marks to be discarded (clips cut with
    ``ffmpeg -ss T -c copy``): there its frame 0 is a frame no player shows, and its reads return
    yet other frames. The reference is PyAV's verified index (``tsn.io.pyav_backend.probe``: the
    shown packets' timestamps, the last frame decoded): the same count and the same timestamps
    (to 0.1 ms), or ``VideoReadError``. A file PyAV cannot verify is refused too, and so are open
    GOPs: decord's seek for a frame shown just before a keyframe starts at that keyframe and
    returns a later frame (frame 12 for frame 9 of a generated H.264 clip).
    """
    try:
        shown = pyav_backend.probe(path).index
    except VideoReadError as error:
        raise VideoReadError(path, f"{NAME}: its frame numbers cannot be checked against the frames the video "
                                   f"shows ({error.reason})") from None
    assert shown is not None  # PyAV's probe always returns its index
    if shown.count != starts.size:
        raise VideoReadError(path, f"{NAME}: its index has {starts.size} frames where the video shows {shown.count} "
                                   f"(an edit list, or packets marked to be discarded): its frame numbers would "
                                   f"not be the shown frames")
    if np.abs(shown.stamps() * shown.seconds_per_unit - starts).max() > 1e-4:
        raise VideoReadError(path, f"{NAME}: its frame timestamps are not those of the frames the video shows")
    if shown.open_gop:
        raise VideoReadError(path, f"{NAME}: open GOPs (frames shown before the keyframe they are decoded after): "
                                   f"its seeks would return other frames")


def probe(path: str) -> VideoInfo:
    """Size, verified frame count and fps of a video file, by decord.

    How ``num_frames`` is verified, and the cost: decord counts the video packets when it opens
    the file (it reads the whole file once to build its index, no decoding, and again at every
    read: its readers cannot be kept), its index must be the frames the video shows
    (``matches_shown_frames``: one PyAV probe), and the claimed last frame is decoded: a seek to the keyframe before it and decoding from there, at most one GOP
    (x264's default is 250 frames). Files whose index
    lacks increasing timestamps are refused first (``timestamps_usable``). A last frame that
    does not decode means a truncated or damaged file (or one of decord's failures, such as frames
    48 or 72 pixels wide): decord then refuses the file with ``VideoReadError`` rather than search
    for the true end, because near damage its threaded decoder reports a bad packet while decoding
    good frames, at random (frames 10 before a damaged tail failed in 3 of 10 tries here); "auto"
    hands such files to OpenCV, whose sequential count is exact.
    """
    reader = _open(path)
    try:
        claimed, fps = _checked_header(path, reader)
        try:
            shape = _batch(reader, [claimed - 1]).shape  # (1, H, W, 3)
        except _ERRORS as error:
            raise VideoReadError(path, f"{NAME}: frame {claimed - 1}, the last of the {claimed} in its index, "
                                       f"does not decode: {_reason(error)}") from None
    finally:
        del reader
    return VideoInfo(height=int(shape[1]), width=int(shape[2]), num_frames=claimed, fps=fps, backend=NAME)


def read_sorted(path: str, indices: np.ndarray, info: VideoInfo, size: tuple[int, int] | None = None,
                threads: int = 1) -> np.ndarray:
    """Frames at sorted, unique, in-range ``indices`` -> uint8 (T, H, W, 3) RGB, one ``get_batch`` call.

    ``size``: (height, width) to scale the frames to while decoding (None: the video's size). Some
    output widths make decord fail as it does for such source widths (16, 24, 48, 72 px here):
    the frames are then decoded at the video's size, which callers must accept.
    ``get_batch`` is decord's decode plan: for each wanted frame it decodes on from the current
    position when that frame's keyframe is not after it, and seeks to the keyframe otherwise
    (its index holds the keyframe positions), so sorted indices never decode a frame twice.
    """
    if size is not None:
        try:
            return _read_sorted(path, indices, size, threads)
        except VideoReadError:
            pass
    return _read_sorted(path, indices, (info.height, info.width), threads, scaled=False)


def _read_sorted(path: str, indices: np.ndarray, size: tuple[int, int], threads: int,
                 scaled: bool = True) -> np.ndarray:
    """``read_sorted`` with one reader giving frames of ``size`` (scaled, or the video's own size)."""
    reader = _open(path, threads, size if scaled else None)
    try:
        frames = _batch(reader, indices.tolist())
    except _ERRORS as error:
        raise VideoReadError(path, f"{NAME}: frames {_span(indices)} do not decode: {_reason(error)}") from None
    finally:
        del reader
    if frames.shape[1:3] != tuple(size):
        said = "asked for" if scaled else "probe said"
        raise VideoReadError(path, f"{NAME}: frames are {frames.shape[2]}x{frames.shape[1]}, "
                                   f"{said} {size[1]}x{size[0]}")
    return frames


def iter_frames(path: str, info: VideoInfo) -> Iterator[np.ndarray]:
    """Frames 0 .. info.num_frames - 1 in order, uint8 (H, W, 3) RGB, decoded in chunks of consecutive frames."""
    reader = _open(path)
    try:
        for start in range(0, info.num_frames, _ITER_CHUNK):
            indices = list(range(start, min(start + _ITER_CHUNK, info.num_frames)))
            try:
                frames = _batch(reader, indices)
            except _ERRORS as error:
                raise VideoReadError(path, f"{NAME}: frames {indices[0]}-{indices[-1]} do not decode: "
                                           f"{_reason(error)}") from None
            yield from frames
    finally:
        del reader


def _span(indices: np.ndarray) -> str:
    """A short description of which frames were asked for."""
    if len(indices) <= 4:
        return ", ".join(str(int(i)) for i in indices)
    return f"{int(indices[0])}..{int(indices[-1])} ({len(indices)} frames)"
