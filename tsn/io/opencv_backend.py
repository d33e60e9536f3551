"""OpenCV backend (its FFmpeg plugin): exact frames by sequential decoding, with verified keyframe seeks.

Frames are read by ``grab()`` going forward, ``retrieve()`` (colour conversion) only for the wanted
ones. OpenCV's ``CAP_PROP_POS_FRAMES`` seek alone is not trusted: it maps a timestamp to a frame
number and can land on the wrong frame for variable frame rates, missing timestamps or some codecs.

Decode plan (``read_sorted``): one demux pass without decoding when ``probe`` runs (OpenCV's
raw-stream mode, kept in the ``VideoInfo`` as its ``index``)
gives every packet's timestamp and keyframe flag, hence the timestamp of each frame in display
order and the keyframe positions. Reading sorted frames, the reader
seeks only when OpenCV's seek to the next wanted frame would start decoding at a keyframe after
the current position (so it skips frames), and otherwise decodes on. Every wanted frame's
timestamp is checked against that table; a mismatch (or a table that does not hold one strictly
increasing timestamp per frame) drops the plan and the frames are read again by one sequential
pass from frame 0, which is exact by construction. With x264's keyframe interval of 250 frames,
short clips gain little (8 TSN frames of a 300-frame clip need most of it anyway: 15 % fewer
frames decoded on actrecog2); long videos gain the most.

Threads: ``threads`` sets ``CAP_PROP_N_THREADS`` when the capture opens (None: OpenCV's default,
one per CPU, right for one decoding process; the Dataset passes each loader worker its share).

Frames come in the coded orientation, like decord's: OpenCV's automatic rotation by the
container's display matrix is switched off, so that every backend (and frames extracted by one)
gives the same picture for the same video.
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from tsn.io.base import FrameIndex, VideoInfo, VideoReadError

NAME = "opencv"
# OpenCV's POS_FRAMES seek starts decoding this many frames before the target (its seek() in
# cap_ffmpeg_impl.hpp), i.e. at the last keyframe at or before target - 16.
_SEEK_LOOKBACK = 16


def _open(path: str, threads: int | None = None) -> cv2.VideoCapture:
    params = [] if threads is None else [cv2.CAP_PROP_N_THREADS, int(threads)]
    try:
        capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
    except cv2.error as error:
        raise VideoReadError(path, f"{NAME}: {str(error).strip().splitlines()[-1]}") from None
    if not capture.isOpened():
        capture.release()
        raise VideoReadError(path, f"{NAME}: cannot open it (not a video, no video stream, or a damaged container)")
    capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
    return capture


def _retrieve_rgb(capture: cv2.VideoCapture, path: str, index: int, out: np.ndarray | None = None) -> np.ndarray:
    """The frame of the last successful ``grab()`` as RGB (into ``out`` when given, which fixes the size)."""
    ok, frame = capture.retrieve()
    if not ok or frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise VideoReadError(path, f"{NAME}: frame {index} decodes but cannot be converted to 8-bit colour")
    if out is None:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    if frame.shape != out.shape:
        raise VideoReadError(path, f"{NAME}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, "
                                   f"the video's first frames are {out.shape[1]}x{out.shape[0]}")
    cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=out)
    return out


def _last_frame_if_claim_holds(capture: cv2.VideoCapture, path: str, claimed: int) -> np.ndarray | None:
    """The frame at ``claimed - 1`` if it decodes and no frame follows it, else None."""
    if claimed < 1 or not capture.set(cv2.CAP_PROP_POS_FRAMES, claimed - 1) or not capture.grab():
        return None
    last = _retrieve_rgb(capture, path, claimed - 1)
    return None if capture.grab() else last


def _count_sequentially(path: str) -> tuple[int, np.ndarray | None]:
    """Frames that decode from the start (``grab()`` until it fails) and the first one (None if none)."""
    capture = _open(path)
    try:
        if not capture.grab():
            return 0, None
        first = _retrieve_rgb(capture, path, 0)
        count = 1
        while capture.grab():
            count += 1
    finally:
        capture.release()
    return count, first


def probe(path: str) -> VideoInfo:
    """Size, verified frame count and fps of a video file, by OpenCV.

    How ``num_frames`` is verified, and the cost: ``CAP_PROP_FRAME_COUNT`` (the container's claim,
    often wrong: OpenCV issues 17257, 16576) is accepted only when the claimed last frame decodes
    and no frame follows it: one seek (FFmpeg decodes from the keyframe before that frame, at most
    one GOP) and two grabs. When the claim fails, or the container makes none, the frames are
    counted by one sequential pass of ``grab()`` (a full decode without colour conversion, about
    as long as the video takes to decode). The seek is used only to check the claim: a seek that
    lands on the wrong frame makes the check fail and the count falls back to the exact pass.
    """
    capture = _open(path)
    try:
        claimed = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        frame = _last_frame_if_claim_holds(capture, path, claimed)
    finally:
        capture.release()
    num_frames = claimed
    if frame is None:
        num_frames, frame = _count_sequentially(path)
    if frame is None:
        raise VideoReadError(path, f"{NAME}: no frame decodes")
    return VideoInfo(height=int(frame.shape[0]), width=int(frame.shape[1]), num_frames=num_frames,
                     fps=fps if np.isfinite(fps) and fps > 0 else 0.0, backend=NAME,
                     index=frame_table(path, num_frames))


def frame_table(path: str, num_frames: int) -> FrameIndex | None:
    """The ``FrameIndex`` of ``path`` from its packets (no decoding; timestamps in ms), or None when
    it cannot be trusted: not exactly ``num_frames`` packets (packets that are never shown, as
    before an MP4 edit list, give more), timestamps missing or not all distinct, or no keyframe at
    frame 0. ``probe`` builds it once and keeps it in its ``VideoInfo``; None means sequential reads."""
    try:
        capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    except cv2.error:
        return None
    stamps, keys = [], []
    try:
        if not capture.isOpened():
            return None
        while capture.grab() and len(stamps) <= num_frames:
            stamps.append(capture.get(cv2.CAP_PROP_POS_MSEC))
            keys.append(capture.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME) != 0)
    finally:
        capture.release()
    if len(stamps) != num_frames:
        return None
    packet_stamps = np.asarray(stamps, dtype=np.float64)
    ordered = np.sort(packet_stamps)  # (num_frames,) display order
    if not (np.isfinite(ordered).all() and (np.diff(ordered) > 0).all()):
        return None
    key_stamps = packet_stamps[np.asarray(keys, dtype=bool)]
    if key_stamps.size == 0 or key_stamps.min() != ordered[0]:
        return None
    return FrameIndex.of(ordered, key_stamps, 1e-3)


def _keyframe_numbers(table: FrameIndex) -> np.ndarray:
    """The keyframes' frame numbers, (K,) increasing (every packet is a frame where a table exists)."""
    return np.searchsorted(table.stamps(), table.keyframes)


def _seek_start(keyframes: np.ndarray, index: int) -> int:
    target = max(index - _SEEK_LOOKBACK, 0)
    return int(keyframes[np.searchsorted(keyframes, target, side="right") - 1])


def seek_start(table: FrameIndex, index: int) -> int:
    """The keyframe (frame number) that OpenCV's seek to frame ``index`` starts decoding from."""
    return _seek_start(_keyframe_numbers(table), index)


def plan(table: FrameIndex, indices: np.ndarray) -> list[bool]:
    """For sorted, unique ``indices``: whether to seek before each one (True) or decode on to it.

    A seek pays when it starts decoding after the current position (the frame after the last
    wanted one), since everything from there to the keyframe is skipped.
    """
    keyframes = _keyframe_numbers(table)
    seeks, position = [], 0
    for index in indices.tolist():
        seeks.append(_seek_start(keyframes, index) > position)
        position = index + 1
    return seeks


class PlanMismatch(Exception):
    """A frame read by the plan is not where the frame table says (or decoding stopped early)."""


def read_sorted(path: str, indices: np.ndarray, info: VideoInfo, threads: int | None = None) -> np.ndarray:
    """Frames at sorted, unique, in-range ``indices`` -> uint8 (T, H, W, 3) RGB.

    With a usable ``frame_table`` (``info.index``, built by ``probe``) and at least one seek that
    pays, by the decode plan (module docstring), every frame's timestamp verified; otherwise, or
    when a check fails, by one sequential pass from frame 0.
    """
    table = info.index
    if table is not None and table.count == info.num_frames and any(plan(table, indices)):
        try:
            return read_planned(path, indices, info, table, threads)
        except PlanMismatch:
            pass
    return _read_sequential(path, indices, info, threads)


def read_planned(path: str, indices: np.ndarray, info: VideoInfo, table: FrameIndex,
                 threads: int | None = None) -> np.ndarray:
    """Frames at sorted, unique, in-range ``indices`` -> uint8 (T, H, W, 3) RGB by the decode plan of
    ``table``; raises ``PlanMismatch`` when a frame's timestamp is not the table's for its index."""
    out = np.empty((len(indices), info.height, info.width, 3), dtype=np.uint8)  # (T, H, W, 3)
    seeks = plan(table, indices)
    stamps = table.stamps()  # (num_frames,) ms
    capture = _open(path, threads)
    try:
        position = 0  # the frame that the next grab() returns
        for slot, (index, seek) in enumerate(zip(indices.tolist(), seeks)):
            if seek:
                capture.set(cv2.CAP_PROP_POS_FRAMES, index)
                position = index
            while position <= index:
                if not capture.grab():
                    raise PlanMismatch(f"decoding stopped at frame {position}")
                position += 1
            # Two timestamps of one frame agree exactly (same packet, same arithmetic); the
            # tolerance only guards against float noise and stays far below one frame interval.
            stamp = capture.get(cv2.CAP_PROP_POS_MSEC)
            if abs(stamp - stamps[index]) > 1e-3:
                raise PlanMismatch(f"frame {index} should be at {stamps[index]} ms, got {stamp} ms")
            _retrieve_rgb(capture, path, index, out[slot])
    finally:
        capture.release()
    return out


def _read_sequential(path: str, indices: np.ndarray, info: VideoInfo, threads: int | None) -> np.ndarray:
    """Frames at sorted, unique, in-range ``indices`` by one pass of ``grab()`` from frame 0."""
    out = np.empty((len(indices), info.height, info.width, 3), dtype=np.uint8)  # (T, H, W, 3)
    capture = _open(path, threads)
    try:
        position = 0  # the frame that the next grab() returns
        for slot, index in enumerate(indices.tolist()):
            while position <= index:
                if not capture.grab():
                    raise VideoReadError(path, f"{NAME}: decoding stopped at frame {position} "
                                               f"(probe counted {info.num_frames} frames)")
                position += 1
            _retrieve_rgb(capture, path, index, out[slot])
    finally:
        capture.release()
    return out


def iter_frames(path: str, info: VideoInfo) -> Iterator[np.ndarray]:
    """Frames 0 .. info.num_frames - 1 in order, uint8 (H, W, 3) RGB, each a new array."""
    capture = _open(path)
    try:
        for index in range(info.num_frames):
            if not capture.grab():
                raise VideoReadError(path, f"{NAME}: decoding stopped at frame {index} "
                                           f"(probe counted {info.num_frames} frames)")
            yield _retrieve_rgb(capture, path, index, np.empty((info.height, info.width, 3), dtype=np.uint8))
    finally:
        capture.release()
