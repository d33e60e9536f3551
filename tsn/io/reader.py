"""One interface over the backends: ``probe``, ``read`` and ``iter_frames``, the backend chosen once per video.

``backend`` is one of ``"auto"``, ``"pyav"``, ``"decord"``, ``"opencv"``, ``"torchcodec"`` (optional,
``tsn.io.torchcodec_backend``; never chosen by ``"auto"``), ``"rawframes"``. A folder is
always a frame folder (``"auto"`` or ``"rawframes"``). On a file, ``"auto"``'s probe tries PyAV, then
OpenCV (for ``iter_frames``: OpenCV, then PyAV, see there); a named backend is used alone. When the
first backend fails and the second works, one warning on the logger ``"tsn.io"`` says so, once per
file in each process; except for a file PyAV refuses by design because of its packed B-frames
(``tsn.io.pyav_backend.PackedBFrames``), which OpenCV reads: the first such file is logged at INFO,
the others at DEBUG with a running count. When none works, one
``VideoReadError`` names the file and every backend's reason. The backend that probed
(``VideoInfo.backend``) then reads every frame of that video, with the ``FrameIndex`` it built: frame
``i`` is the ``i``-th frame a player shows, whichever backend.
"""

from __future__ import annotations

import logging
import os
import stat
from types import ModuleType
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

from tsn.io import decord_backend, opencv_backend, pyav_backend, rawframes, torchcodec_backend
from tsn.io.base import VideoInfo, VideoReadError

BACKENDS = (pyav_backend.NAME, decord_backend.NAME, opencv_backend.NAME, torchcodec_backend.NAME, rawframes.NAME)
# What a user names (--backend, data.backend): "rawframes" needs no naming, a folder is always read as frames.
BACKEND_CHOICES = ("auto", pyav_backend.NAME, decord_backend.NAME, opencv_backend.NAME, torchcodec_backend.NAME)
_CHOICES = ("auto",) + BACKENDS
_MODULES: dict[str, ModuleType] = {module.NAME: module for module in (pyav_backend, decord_backend, opencv_backend,
                                                                       torchcodec_backend, rawframes)}
# PyAV first: frames identified by their timestamps, unwanted non-reference frames never decoded
# (see tsn.io.pyav_backend; the README's loader benchmarks compare the backends).
_PROBE_ORDER = (pyav_backend.NAME, opencv_backend.NAME)
# Whole-video decoding: OpenCV first, it decodes with several threads.
_ITER_ORDER = (opencv_backend.NAME, pyav_backend.NAME)

logger = logging.getLogger("tsn.io")
# Files whose fallback was already logged by this process (absolute paths, not readers).
_fallback_logged: set[str] = set()
# Of those, the files read by OpenCV because PyAV cannot decode their packed B-frames.
_packed_b_frame_files: set[str] = set()

Result = TypeVar("Result")


def _kind(path: str, backend: str) -> str:
    """"rawframes" for a folder, else ``backend``; VideoReadError for a path that no backend can take."""
    if backend not in _CHOICES:
        raise ValueError(f"backend must be one of {_CHOICES}, got {backend!r}")
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise VideoReadError(path, "no such file or folder") from None
    except OSError as error:
        raise VideoReadError(path, f"cannot access it: {error.strerror}") from None
    if stat.S_ISDIR(status.st_mode):
        if backend in ("auto", rawframes.NAME):
            return rawframes.NAME
        raise VideoReadError(path, f"is a folder, not a video file (backend {backend!r}; "
                                   f"frame folders need 'rawframes' or 'auto')")
    if backend == rawframes.NAME:
        raise VideoReadError(path, "is a file, not a folder of frames (backend 'rawframes')")
    if not stat.S_ISREG(status.st_mode):
        raise VideoReadError(path, "not a regular file")
    if status.st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoReadError(path, "not readable (permission denied)")
    return backend


def _log_fallback(path: str, refusal: VideoReadError, used: str) -> None:
    """Say, once per file, that ``used`` reads ``path`` because the first backend refused it (``refusal``).

    Packed B-frames are read as designed, nothing for the user to do: INFO for the first such file, DEBUG after.
    """
    key = os.path.abspath(path)
    if key in _fallback_logged:
        return
    _fallback_logged.add(key)
    if not isinstance(refusal, pyav_backend.PackedBFrames):
        logger.warning("%s: %s; reading it with %s instead", path, refusal.reason, used)
        return
    _packed_b_frame_files.add(key)
    count = len(_packed_b_frame_files)
    if count == 1:
        logger.info("%s: read by %s (PyAV cannot decode packed B-frames); other such files are logged at DEBUG",
                    path, used)
    else:
        logger.debug("%s: read by %s (PyAV cannot decode packed B-frames; %d such files so far)", path, used, count)


def _first_that_works(path: str, order: Sequence[str], attempt: Callable[[str], Result]) -> Result:
    """``attempt(backend)`` for each backend in ``order`` until one does not raise VideoReadError."""
    errors = []
    for name in order:
        try:
            result = attempt(name)
        except VideoReadError as error:
            errors.append(error)
            continue
        if errors:
            _log_fallback(path, errors[0], name)
        return result
    raise VideoReadError(path, "no backend can read it: " + "; ".join(error.reason for error in errors))


def probe(path: str | os.PathLike, backend: str = "auto") -> VideoInfo:
    """Frame size, number of frames that really decode, fps and the backend that read them.

    A folder is probed as a frame folder; ``"auto"`` on a file tries PyAV, then OpenCV. How each
    backend verifies ``num_frames``, and what that costs, is in its ``probe``:

    - PyAV (``tsn.io.pyav_backend.probe``): the packets are counted by one demux pass and the last
      frame is decoded (at most one GOP, non-reference frames skipped);
    - decord (``tsn.io.decord_backend.probe``): the claimed last frame is decoded (at most one GOP);
      only if it fails, a binary search (about log2(n) single-frame decodes) finds the true end.
    - OpenCV (``tsn.io.opencv_backend.probe``): ``CAP_PROP_FRAME_COUNT`` is kept when its last frame
      decodes and none follows (one seek, at most one GOP decoded); otherwise the frames are counted
      by one full sequential pass of ``grab()``.
    - frame folders (``tsn.io.rawframes.probe``): one directory listing, first and last JPEG decoded.

    Raises ``VideoReadError`` (path and reason) when the video cannot be read; ``ValueError`` for
    an unknown backend name.
    """
    path = os.fspath(path)
    kind = _kind(path, backend)
    if kind == "auto":
        return _first_that_works(path, _PROBE_ORDER, lambda name: _MODULES[name].probe(path))
    return _MODULES[kind].probe(path)


def _as_indices(indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Frame numbers -> int64 (T,); TypeError/ValueError for anything but a 1-D sequence of integers."""
    array = np.asarray(indices)
    if array.ndim != 1:
        raise ValueError(f"indices must be a 1-D sequence of frame numbers, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"indices must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_range(path: str, wanted: np.ndarray, num_frames: int) -> None:
    outside = wanted[(wanted < 0) | (wanted >= num_frames)]
    if outside.size:
        more = f" ({outside.size} indices out of range)" if outside.size > 1 else ""
        raise VideoReadError(path, f"frame index {int(outside[0])} outside [0, {num_frames}){more}")


def _gather(wanted: np.ndarray, read_sorted: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Decode each distinct frame once (sorted, so decoders only move forward), then lay them out as asked."""
    unique, inverse = np.unique(wanted, return_inverse=True)
    frames = read_sorted(unique)  # (U, H, W, 3), U distinct frames in increasing order
    if unique.size == wanted.size and np.array_equal(unique, wanted):
        return frames
    return frames[inverse.reshape(-1)]  # (T, H, W, 3) in the requested order


def read(path: str | os.PathLike, indices: Sequence[int] | np.ndarray, backend: str = "auto",
         info: VideoInfo | None = None, size: tuple[int, int] | None = None,
         threads: int | None = None) -> np.ndarray:
    """Frames ``indices`` (0-based, any order, repeats allowed) -> uint8 ``(T, H, W, 3)`` RGB, in that order.

    ``info`` is this path's ``probe`` result: pass it to skip probing and indexing again (the
    Dataset does). With ``backend="auto"`` its backend reads the frames, and no other: there is no
    fallback per read, which could number the frames differently from one call to the next (a
    read that fails raises). An ``info`` from another backend than the one asked for is ignored
    and that backend probes. A folder of frames needs no ``info``: its frames are counted by one
    directory listing.

    Each distinct frame is decoded once, in increasing order (PyAV: identified by timestamp, seeking
    to a keyframe only when that skips frames, see ``tsn.io.pyav_backend``; decord: one ``get_batch``, which seeks
    to a keyframe only when that skips frames; OpenCV: one forward pass that seeks to a keyframe
    when that skips frames and every landing is verified, see ``tsn.io.opencv_backend``; frame
    folders: one decode per frame). An index outside ``[0, num_frames)`` raises ``VideoReadError``
    naming it, as does a video that cannot be read; indices that are not a 1-D sequence of
    integers raise TypeError/ValueError.

    ``size``: (height, width) the caller will scale the frames to anyway; PyAV and decord then
    convert the frames directly to that size, the other backends return the video's own size (H, W above are then
    ``size`` or the video's). ``threads``: decoding threads per reader (None: 1 for decord and
    frame folders, where that many JPEGs are decoded at once; always 1 for PyAV; OpenCV's default
    of one per CPU).
    """
    path = os.fspath(path)
    wanted = _as_indices(indices)
    kind = _kind(path, backend)
    if wanted.size == 0:
        info = info if info is not None else probe(path, backend)
        return np.empty((0, info.height, info.width, 3), dtype=np.uint8)  # (0, H, W, 3)
    if kind == rawframes.NAME:
        known = info if info is not None and info.backend == rawframes.NAME else None
        _check_range(path, wanted, known.num_frames if known is not None else rawframes.count_frames(path))
        return _gather(wanted, lambda unique: rawframes.read_sorted(path, unique, known, threads or 1))

    if info is None or (kind != "auto" and info.backend != kind):
        info = probe(path, kind)
    _check_range(path, wanted, info.num_frames)
    return _read_video(path, wanted, info, size, threads)


def read_first(path: str | os.PathLike, choose: Callable[[int], np.ndarray], backend: str = "auto",
               size_for: Callable[[int, int], tuple[int, int] | None] | None = None,
               threads: int | None = None) -> tuple[VideoInfo, np.ndarray, np.ndarray]:
    """Probe a video and read the frames ``choose(num_frames)`` picks, in one decoding pass where the backend can.

    In: ``choose`` maps the frame count to 0-based indices of any shape (it may be called twice
    and must then give the same answer), ``size_for(height, width)`` the decoding size for
    ``read`` (None: the video's own). Out: ``(info, indices, frames)``, exactly what
    ``info = probe(path, backend)``, ``indices = choose(info.num_frames)`` and
    ``read(path, indices.reshape(-1), backend, info, size_for(info.height, info.width), threads)``
    give, frames uint8 ``(indices.size, H, W, 3)``.

    Why: ``probe`` verifies the frame count by decoding the last GOP on its own (about a third
    of an 8-frame read on the clips here). With PyAV (``"auto"`` on a file, or ``"pyav"``) this
    takes the count of its index (``claimed_info``) and decodes the last frame in the same sorted
    pass as the chosen ones, which usually ends in the last GOP anyway. Any failure on that path,
    a wrong count included, falls back to the separate probe (which chooses the backend, for
    ``"auto"``) and read, which then report exactly as they would have.
    """
    path = os.fspath(path)
    kind = _kind(path, backend)
    # Only PyAV verifies a claimed count in the same pass as a read: decord's frame numbers are
    # checked against PyAV's verified index by its probe (tsn.io.decord_backend.matches_shown_frames).
    if kind in ("auto", pyav_backend.NAME):
        try:
            return _read_first_claimed(path, choose, size_for, threads)
        except VideoReadError:
            pass  # probe, below, tells what is wrong (and "auto" tries OpenCV)
    info = probe(path, backend)
    indices = np.asarray(choose(info.num_frames))
    size = size_for(info.height, info.width) if size_for is not None else None
    return info, indices, read(path, indices.reshape(-1), backend, info, size, threads)


def _read_first_claimed(path: str, choose: Callable[[int], np.ndarray],
                        size_for: Callable[[int, int], tuple[int, int] | None] | None,
                        threads: int | None) -> tuple[VideoInfo, np.ndarray, np.ndarray]:
    """``read_first`` by PyAV alone, its index's count verified by decoding the last frame; VideoReadError otherwise."""
    info = pyav_backend.claimed_info(path)
    indices = np.asarray(choose(info.num_frames))
    wanted = _as_indices(indices.reshape(-1))
    _check_range(path, wanted, info.num_frames)
    size = size_for(info.height, info.width) if size_for is not None else None
    if wanted.size == 0:
        return info, indices, np.empty((0, info.height, info.width, 3), dtype=np.uint8)  # (0, H, W, 3), as read
    last = info.num_frames - 1

    def read_sorted(unique: np.ndarray) -> np.ndarray:
        with_last = unique if unique[-1] == last else np.append(unique, last)
        frames = pyav_backend.read_sorted(path, with_last, info, size, threads or 1)  # (U or U+1, H, W, 3)
        return frames[:unique.size]

    return info, indices, _gather(wanted, read_sorted)


def _read_video(path: str, wanted: np.ndarray, info: VideoInfo, size: tuple[int, int] | None,
                threads: int | None) -> np.ndarray:
    """Frames ``wanted`` (checked in range) of a video file by the backend that produced ``info``."""
    if info.backend in (pyav_backend.NAME, decord_backend.NAME, torchcodec_backend.NAME):
        module = _MODULES[info.backend]
        return _gather(wanted, lambda unique: module.read_sorted(path, unique, info, size, threads or 1))
    if info.backend == opencv_backend.NAME:
        return _gather(wanted, lambda unique: opencv_backend.read_sorted(path, unique, info, threads))
    raise ValueError(f"{path}: an info from backend {info.backend!r} cannot read a video file")


def iter_frames(path: str | os.PathLike, backend: str = "auto") -> Iterator[np.ndarray]:
    """Every frame of a video (file or frame folder) in order, each a uint8 ``(H, W, 3)`` RGB array.

    The video is probed first by the backend that then decodes it, so a video that cannot be read
    raises ``VideoReadError`` here, before any frame, and exactly that probe's ``num_frames`` frames
    follow, in one sequential pass. ``"auto"`` on a file tries OpenCV first, then PyAV: for whole
    videos OpenCV, decoding on several threads, is the faster. Decoding that stops before the probed count (damage in the
    middle of a file) raises ``VideoReadError`` from the iterator.
    """
    path = os.fspath(path)
    kind = _kind(path, backend)
    if kind == "auto":
        info = _first_that_works(path, _ITER_ORDER, lambda name: _MODULES[name].probe(path))
    else:
        info = _MODULES[kind].probe(path)
    return _MODULES[info.backend].iter_frames(path, info)
