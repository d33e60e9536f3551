"""OpenCV backend (its FFmpeg plugin): exact frames by sequential decoding.

Frames are read by ``grab()`` from the start of the video, ``retrieve()`` (colour conversion) only
for the wanted ones. That is exact by construction: OpenCV's ``CAP_PROP_POS_FRAMES`` seek maps a
timestamp to a frame number and can land on the wrong frame for variable frame rates, missing
timestamps or some codecs. The cost of a read is decoding every frame up to the last one asked
for. OpenCV decodes with several threads, so this is not slow: 8 TSN frames from each of the 15
actrecog2 val clips (360p to 1080p, 175 to 964 frames) took 10.5 to 11 s in all on this 2-core
machine, against 14 to 15 s for decord's seeks with one thread.

Frames come in the coded orientation, like decord's: OpenCV's automatic rotation by the
container's display matrix is switched off, so that every backend (and frames extracted by one)
gives the same picture for the same video.
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from tsn.io.base import VideoInfo, VideoReadError

NAME = "opencv"


def _open(path: str) -> cv2.VideoCapture:
    try:
        capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
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
                     fps=fps if np.isfinite(fps) and fps > 0 else 0.0, backend=NAME)


def read_sorted(path: str, indices: np.ndarray, info: VideoInfo) -> np.ndarray:
    """Frames at sorted, unique, in-range ``indices`` -> uint8 (T, H, W, 3) RGB, in one pass from frame 0."""
    out = np.empty((len(indices), info.height, info.width, 3), dtype=np.uint8)  # (T, H, W, 3)
    capture = _open(path)
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
