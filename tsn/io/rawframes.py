"""Frame-folder backend: ``img_00001.jpg, img_00002.jpg, ...`` (1-based; frame i is ``img_{i+1:05d}.jpg``).

JPEGs are decoded with ``cv2.imread`` straight to RGB where OpenCV offers it (``IMREAD_COLOR_RGB``,
OpenCV >= 4.10: libjpeg-turbo writes RGB, no conversion pass), else to BGR and converted. Other
files in the folder (flow frames ``x_*.jpg``, markers) are ignored. The frames must be numbered without a gap: a missing
one is an error, never silently skipped.
"""

from __future__ import annotations

import os
import re
from typing import Iterator

import cv2
import numpy as np

from tsn.io.base import FLOW_TEMPLATES, RAWFRAME_TEMPLATE, TSN_FLOW_TEMPLATES, VideoInfo, VideoReadError
from tsn.runtime.pools import thread_pool

NAME = "rawframes"
# Decode straight to RGB where this OpenCV can (4.10 and later); None: decode to BGR and convert.
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)
_FRAME_NAME = re.compile(r"^img_\d{5,}\.jpg$")


def count_frames(folder: str) -> int:
    """Number of frames in a frame folder, from one directory listing (nothing is decoded).

    Raises ``VideoReadError`` when there is no ``img_00001.jpg`` or when a frame between the
    first and the last is missing.
    """
    try:
        names = {entry.name for entry in os.scandir(folder) if _FRAME_NAME.match(entry.name)}
    except OSError as error:
        raise VideoReadError(folder, f"{NAME}: cannot list the folder: {error.strerror}") from None
    first = RAWFRAME_TEMPLATE.format(1)
    if first not in names:
        raise VideoReadError(folder, f"{NAME}: folder without {first} (neither a video file nor a folder of frames)")
    count = len(names)
    for number in range(2, count + 1):
        if RAWFRAME_TEMPLATE.format(number) not in names:
            raise VideoReadError(folder, f"{NAME}: {RAWFRAME_TEMPLATE.format(number)} is missing "
                                         f"(the folder has {count} frame files)")
    return count


def _imread_rgb(folder: str, index: int, out: np.ndarray | None = None) -> np.ndarray:
    """Frame ``index`` (0-based) as uint8 (H, W, 3) RGB, into ``out`` when given (which fixes the size)."""
    name = RAWFRAME_TEMPLATE.format(index + 1)
    frame = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR if _IMREAD_RGB is None else _IMREAD_RGB)
    if frame is None:
        raise VideoReadError(folder, f"{NAME}: {name} (frame {index}) is missing or does not decode")
    if out is None:
        return frame if _IMREAD_RGB is not None else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    if frame.shape != out.shape:
        raise VideoReadError(folder, f"{NAME}: {name} is {frame.shape[1]}x{frame.shape[0]}, "
                                     f"expected {out.shape[1]}x{out.shape[0]} like the other frames")
    if _IMREAD_RGB is not None:
        out[...] = frame
    else:
        cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=out)
    return out


def probe(folder: str) -> VideoInfo:
    """Size and frame count of a frame folder; ``fps`` is 0.0 (unknown).

    How ``num_frames`` is verified, and the cost: one directory listing (every frame from
    ``img_00001.jpg`` up must be there), then the first and the last JPEG are decoded (same size,
    both readable). Frames in between are not decoded; ``read`` reports one that is damaged.
    """
    count = count_frames(folder)
    first = _imread_rgb(folder, 0)
    _imread_rgb(folder, count - 1, np.empty_like(first))
    return VideoInfo(height=int(first.shape[0]), width=int(first.shape[1]), num_frames=count, fps=0.0,
                     backend=NAME)


def read_sorted(folder: str, indices: np.ndarray, info: VideoInfo | None, threads: int = 1) -> np.ndarray:
    """Frames at sorted, unique, in-range ``indices`` -> uint8 (T, H, W, 3) RGB.

    Without ``info`` the frame size is taken from the first frame read; every frame must match it.
    ``threads`` > 1 decodes that many JPEGs at once (OpenCV releases the GIL while decoding): one
    loader process on a machine with spare cores uses them, as the video decoders do.
    """
    indices = indices.tolist()
    if info is None:
        first = _imread_rgb(folder, indices[0])
        out = np.empty((len(indices),) + first.shape, dtype=np.uint8)  # (T, H, W, 3)
        out[0] = first
        slots = list(enumerate(indices))[1:]
    else:
        out = np.empty((len(indices), info.height, info.width, 3), dtype=np.uint8)  # (T, H, W, 3)
        slots = list(enumerate(indices))
    if threads > 1 and len(slots) > 1:
        # list() waits for every frame and re-raises the first VideoReadError.
        list(thread_pool("jpeg", threads).map(lambda slot: _imread_rgb(folder, slot[1], out[slot[0]]), slots))
    else:
        for slot, index in slots:
            _imread_rgb(folder, index, out[slot])
    return out


def iter_frames(folder: str, info: VideoInfo) -> Iterator[np.ndarray]:
    """Frames 0 .. info.num_frames - 1 in order, uint8 (H, W, 3) RGB."""
    for index in range(info.num_frames):
        yield _imread_rgb(folder, index, np.empty((info.height, info.width, 3), dtype=np.uint8))


def flow_templates(folder: str) -> tuple[str, str]:
    """The (x, y) file names of a flow folder: ``x_00001.jpg`` (mmaction2, ``tools/extract_flow.py``) or
    ``flow_x_00001.jpg`` (the original TSN's extractor), whichever its first pair uses."""
    for templates in (FLOW_TEMPLATES, TSN_FLOW_TEMPLATES):
        if os.path.isfile(os.path.join(folder, templates[0].format(1))):
            return templates
    raise VideoReadError(folder, f"{NAME}: no flow frames ({FLOW_TEMPLATES[0].format(1)} or "
                                 f"{TSN_FLOW_TEMPLATES[0].format(1)})")


def count_flow_frames(folder: str) -> int:
    """Flow pairs in a flow folder, from one directory listing; every pair from the first up must be complete."""
    templates = flow_templates(folder)
    prefix = templates[0].split("{")[0]
    pattern = re.compile(rf"^{re.escape(prefix)}\d{{5,}}\.jpg$")
    try:
        names = {entry.name for entry in os.scandir(folder)}
    except OSError as error:
        raise VideoReadError(folder, f"{NAME}: cannot list the folder: {error.strerror}") from None
    count = sum(1 for name in names if pattern.match(name))
    for number in range(1, count + 1):
        for template in templates:
            if template.format(number) not in names:
                raise VideoReadError(folder, f"{NAME}: {template.format(number)} is missing "
                                             f"(the folder has {count} x flow files)")
    return count


def _imread_gray(folder: str, name: str, index: int) -> np.ndarray:
    image = cv2.imread(os.path.join(folder, name), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise VideoReadError(folder, f"{NAME}: {name} (flow pair {index}) is missing or does not decode")
    return image


def read_flow(folder: str, indices: np.ndarray, threads: int = 1) -> np.ndarray:
    """Flow pairs ``indices`` (0-based, any order, repeats allowed) of a flow folder -> uint8 (T, H, W, 2),
    channel 0 the x flow, 1 the y flow, quantised as ``tsn.jobs.flow`` writes them.

    Each distinct pair is decoded once; ``threads`` > 1 decodes that many JPEGs at once.
    """
    templates = flow_templates(folder)
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)

    def pair(index: int) -> np.ndarray:
        x = _imread_gray(folder, templates[0].format(index + 1), index)
        y = _imread_gray(folder, templates[1].format(index + 1), index)
        if x.shape != y.shape:
            raise VideoReadError(folder, f"{NAME}: flow pair {index}: x is {x.shape[1]}x{x.shape[0]}, "
                                         f"y is {y.shape[1]}x{y.shape[0]}")
        return np.stack([x, y], axis=-1)  # (H, W, 2)

    if threads > 1 and unique.size > 1:
        pairs = list(thread_pool("jpeg", threads).map(pair, unique.tolist()))
    else:
        pairs = [pair(index) for index in unique.tolist()]
    shapes = {p.shape for p in pairs}
    if len(shapes) > 1:
        raise VideoReadError(folder, f"{NAME}: flow pairs of different sizes: {sorted(shapes)}")
    return np.stack(pairs)[inverse.reshape(-1)]  # (T, H, W, 2) in the requested order
