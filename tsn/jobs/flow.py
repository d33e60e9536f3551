"""Optical flow between consecutive frames, stored as TSN and mmaction2 store it: two 8-bit images per pair.

Methods (``FLOW_METHODS``), all OpenCV on the CPU, from pip packages only:

- ``"dis"`` (default): dense inverse search, ``cv2.DISOpticalFlow_create`` in OpenCV's main package;
- ``"tvl1"``: TV-L1, TSN's own choice, ``cv2.optflow.DualTVL1OpticalFlow_create``, in the contrib build
  (``opencv-contrib-python-headless``, this package's requirement);
- ``"farneback"``: ``cv2.calcOpticalFlowFarneback``, polynomial expansion (coarser, no extra package).

Each method takes two grayscale uint8 frames ``(H, W)`` and returns float32 ``(H, W, 2)``, the (x, y)
displacement in pixels of each pixel of the first frame. ``quantize_flow`` clips it to ``±bound``
(20 px, the TSN/mmaction2 convention) and maps it to 0..255 with ``(f + bound) * 255 / (2 bound)``,
rounded: 128 is no motion (127.5 exactly), and a mirrored image's x flow is ``255 - x``.
A video of n frames gives n - 1 flow pairs; pair i (0-based) is the motion from frame i to i + 1.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from tsn.errors import UserError

FLOW_METHODS = ("dis", "tvl1", "farneback")
DEFAULT_BOUND = 20.0

FlowFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


class FlowMethodUnavailable(UserError, RuntimeError):
    """A flow method whose OpenCV module is not installed; the message says what to install."""


def flow_function(method: str) -> FlowFunction:
    """``method`` (one of ``FLOW_METHODS``) -> ``(gray0, gray1) -> flow float32 (H, W, 2)``.

    One OpenCV object per call of this function: keep the result for a whole video (DIS and TV-L1
    keep no state between pairs, so the flow of a pair does not depend on the pairs before it).
    """
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return lambda first, second: dis.calc(first, second, None)
    if method == "tvl1":
        optflow = getattr(cv2, "optflow", None)
        if optflow is None or not hasattr(optflow, "DualTVL1OpticalFlow_create"):
            raise FlowMethodUnavailable("flow method 'tvl1' needs OpenCV's contrib modules: pip install "
                                        "opencv-contrib-python-headless (in place of opencv-python-headless)")
        tvl1 = optflow.DualTVL1OpticalFlow_create()
        return lambda first, second: tvl1.calc(first, second, None)
    if method == "farneback":
        return lambda first, second: cv2.calcOpticalFlowFarneback(first, second, None, pyr_scale=0.5, levels=3,
                                                                  winsize=15, iterations=3, poly_n=5,
                                                                  poly_sigma=1.2, flags=0)
    raise ValueError(f"flow method must be one of {FLOW_METHODS}, got {method!r}")


def quantize_flow(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> tuple[np.ndarray, np.ndarray]:
    """float (H, W, 2) displacement -> (x, y) uint8 (H, W) images: clipped to ±bound, 0..255 linear."""
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2.0 * bound))
    quantized = np.rint(scaled).astype(np.uint8)  # (H, W, 2)
    return np.ascontiguousarray(quantized[..., 0]), np.ascontiguousarray(quantized[..., 1])


def dequantize_flow(x: np.ndarray, y: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Inverse of ``quantize_flow`` (up to its rounding, ``bound / 255`` px): -> float32 (H, W, 2)."""
    stacked = np.stack([x, y], axis=-1).astype(np.float32)  # (H, W, 2)
    return stacked * (2.0 * bound / 255.0) - bound


def to_gray(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> grayscale uint8 (H, W)."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def video_flow(frames: Iterable[np.ndarray], method: str = "dis", bound: float = DEFAULT_BOUND
               ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """RGB frames (H, W, 3) in order -> for each frame, ``(frame, x, y)``: the frame and the quantised flow
    from it to the next one. The last frame has no next one and is yielded as ``(frame, None, None)``,
    so that a caller writing the RGB frames too needs only this one pass."""
    compute = flow_function(method)
    previous, previous_gray = None, None
    for frame in frames:
        gray = to_gray(frame)
        if previous is not None:
            x, y = quantize_flow(compute(previous_gray, gray), bound)
            yield previous, x, y
        previous, previous_gray = frame, gray
    if previous is not None:
        yield previous, None, None
