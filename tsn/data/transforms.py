"""Spatial transforms on uint8 clips: one crop box and one flip decision for the whole clip.

Every transform is a callable ``(frames, rng) -> frames`` on numpy uint8 ``(T, H, W, 3)`` RGB
frames (layout in ``tsn.layout``). A multi-crop test transform returns ``(V, T, h, w, 3)``.
Optical flow comes as ``(T, H, W, 2)``, the quantised (x, y) flow of ``tsn.jobs.flow``: the same
crops apply, and a mirror also negates the x flow (``255 - x``), since motion to the right
becomes motion to the left.

Why not torchvision's ``Compose`` frame by frame (as the seed article did): every frame would
draw its own random crop and flip, so the frames of one clip would no longer show the same
region. Here the random draws happen once per clip, from the ``rng`` the Dataset derives from
(seed, epoch, index), so results do not depend on the number of loader workers.

Crop before resize: every preset is written as "resize the frame, then crop", but the crop box
is computed in *source* pixel coordinates first (rounded to whole source pixels) and only that
box is resized, so a 1080p frame costs one small resize instead of a full-frame one. The
rounding moves the box edges by at most half a source pixel, which is under half an output
pixel when the source is at least as large as the resized frame (``tests/test_transforms.py``
checks against resize-then-crop: mean difference under 0.75 grey levels). A source much smaller
than ``short_side`` (e.g. 90 px upscaled to 256) gets a shift of up to scale/2 output pixels;
exact sub-pixel boxes (``cv2.warpAffine``) cost twice the resize time and were not worth it.

Decoding at the resized size: a transform whose crop is defined on the frame resized to a short
side (``MultiScaleCrop``, ``ResizedCenterCrop``, ``MultiCrop``, and a ``ClipTransform`` that starts
with one) has ``decode_size(height, width)``: that resized frame's (height, width) when it is
smaller than the source, else None. The Dataset asks the reader for frames of that size (decord
scales them while decoding) and the transform, applied to them, draws the same box as on the
source, now without rounding: exactly "resize, then crop" as TSN and mmaction2 do it. Every
transform also accepts frames of any other size (the video's own, from a backend that cannot
scale), so the result never depends on which backend read the frames beyond resampling.
``RandomResizedCrop`` has none: its boxes can be small, and a pre-shrunk frame would be upscaled.

Interpolation: ``cv2.INTER_LINEAR`` (what mmaction2 and the original TSN use). Bilinear
does not antialias when shrinking a lot; with ``antialias=True`` a box that is more than twice
the output size on an axis is shrunk with ``cv2.INTER_AREA`` instead. It is off by default
because it is much slower than bilinear. With frames extracted at short side 256 the shrink factor stays below 2
for every preset here except RandomResizedCrop's largest boxes, so the flag rarely matters.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Protocol, Sequence, runtime_checkable

import cv2
import numpy as np
import torch

# What every transform looks like: uint8 frames and a generator in, uint8 frames out.
FrameTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

TRAIN_KINDS = ("random_resized_crop", "multiscale")
TEST_CROPS = (1, 3, 10)
FLOW_CHANNELS = 2  # quantised (x, y) optical flow
CHANNELS = (3, FLOW_CHANNELS)


class CropBox(NamedTuple):
    """A crop in source pixel coordinates: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after scaling the short side to ``short_side`` (torchvision ``Resize(int)``).

    The long side is truncated, as torchvision does: 48x64 at 256 -> (256, 341).
    """
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


@runtime_checkable
class DecodesResized(Protocol):
    """A transform that gives the same result from frames already scaled to ``decode_size``."""

    def decode_size(self, height: int, width: int) -> tuple[int, int] | None:
        """(height, width) to decode a ``height`` x ``width`` video at, or None for its own size."""


def _shrunk(height: int, width: int, short_side: int) -> tuple[int, int] | None:
    """``resized_shape(height, width, short_side)`` when that shrinks the frame, else None."""
    if min(height, width) <= short_side:
        return None
    return resized_shape(height, width, short_side)


def box_to_source(box: CropBox, height: int, width: int, resized_height: int, resized_width: int) -> CropBox:
    """Map a box on the frame resized to (resized_height, resized_width) back to the (height, width) source.

    Edges are rounded to whole source pixels and clamped to the frame; the box keeps at least
    one pixel on each axis.
    """
    scale_y = height / resized_height
    scale_x = width / resized_width
    top = min(_round_half_up(box.top * scale_y), height - 1)
    left = min(_round_half_up(box.left * scale_x), width - 1)
    bottom = min(_round_half_up((box.top + box.height) * scale_y), height)
    right = min(_round_half_up((box.left + box.width) * scale_x), width)
    return CropBox(top, left, max(bottom - top, 1), max(right - left, 1))


def _interpolation(box: CropBox, out_height: int, out_width: int, antialias: bool) -> int:
    if antialias and (box.height > 2 * out_height or box.width > 2 * out_width):
        return cv2.INTER_AREA
    return cv2.INTER_LINEAR


def crop_resize(frames: np.ndarray, box: CropBox, out_height: int, out_width: int,
                antialias: bool = False) -> np.ndarray:
    """Crop ``box`` out of uint8 ``(T, H, W, 3)`` frames and resize it -> uint8 ``(T, out_height, out_width, 3)``.

    Only the box is touched: the slice is a view, and cv2 reads it in place.
    """
    if frames.ndim != 4 or frames.shape[-1] not in CHANNELS:
        raise ValueError(f"expected frames of shape (T, H, W, 3) or flow (T, H, W, 2), got {frames.shape}")
    height, width = frames.shape[1:3]
    if box.top < 0 or box.left < 0 or box.top + box.height > height or box.left + box.width > width:
        raise ValueError(f"crop box {box} outside a {height}x{width} frame")
    crop = frames[:, box.top:box.top + box.height, box.left:box.left + box.width]
    if (box.height, box.width) == (out_height, out_width):
        return np.ascontiguousarray(crop)
    out = np.empty((frames.shape[0], out_height, out_width, frames.shape[-1]), dtype=np.uint8)
    interpolation = _interpolation(box, out_height, out_width, antialias)
    for t in range(frames.shape[0]):
        cv2.resize(crop[t], (out_width, out_height), dst=out[t], interpolation=interpolation)
    return out


def flip_clip(frames: np.ndarray) -> np.ndarray:
    """Mirror ``(..., H, W, C)`` frames left-right -> a contiguous copy of the same shape; flow
    (C = 2) also gets its x flow negated, ``255 - x`` in the quantised form.

    ``cv2.flip`` frame by frame: much faster than copying numpy's reversed view.
    """
    source = np.ascontiguousarray(frames).reshape(-1, *frames.shape[-3:])  # (N, H, W, C)
    out = np.empty_like(source)
    for index in range(source.shape[0]):
        cv2.flip(source[index], 1, dst=out[index])
    if source.shape[-1] == FLOW_CHANNELS:
        np.subtract(255, out[..., 0], out=out[..., 0])  # x flow: right becomes left
    return out.reshape(frames.shape)


class RandomResizedCrop:
    """torchvision's ``RandomResizedCrop`` for a whole clip: one box, drawn as torchvision draws it.

    Up to 10 tries of area fraction ~ U(scale) and log aspect ratio ~ U(log ratio); the first
    box that fits is placed uniformly; after 10 misses, the centre crop with the ratio clamped
    to ``ratio`` (the whole frame when its ratio is inside). Boxes are relative to the frame,
    so no short-side resize comes first: up to rounding it would not change the distribution.
    """

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), antialias: bool = False) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.antialias = antialias

    def box(self, height: int, width: int, rng: np.random.Generator) -> CropBox:
        """The source box for a ``height`` x ``width`` frame; draws from ``rng`` as documented above."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
            # Python's round, as torchvision uses.
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return CropBox(top, left, h, w)
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return CropBox((height - h) // 2, (width - w) // 2, h, w)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3)."""
        box = self.box(frames.shape[1], frames.shape[2], rng)
        return crop_resize(frames, box, self.size, self.size, self.antialias)


class MultiScaleCrop:
    """TSN's ``GroupMultiScaleCrop`` with ``fix_crop`` on the frame resized to ``short_side``.

    On that (conceptual) frame, base = its short side; crop sides are ``int(base * s)`` for s in
    ``scales``, snapped to ``size`` when within 2 pixels; a (height, width) pair of scale indices
    at most ``max_distort`` apart is drawn uniformly, then one of TSN's 5 fixed positions
    (4 corners on a grid of quarter steps, and the centre). TSN's ``more_fix_crop`` (13
    positions) is not offered: 5 is TSN's and mmaction2's default for these recipes.
    The box is mapped to source pixels and only it is resized to ``size`` x ``size``.
    """

    def __init__(self, size: int = 224, short_side: int = 256,
                 scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66), max_distort: int = 1,
                 antialias: bool = False) -> None:
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be in (0, 1], got {tuple(scales)}")
        self.size = size
        self.short_side = short_side
        self.scales = tuple(scales)
        self.max_distort = max_distort
        self.antialias = antialias

    def resized_box(self, resized_height: int, resized_width: int, rng: np.random.Generator) -> CropBox:
        """The box on the frame already resized to (resized_height, resized_width), as TSN draws it."""
        base = min(resized_height, resized_width)
        sides = [int(base * s) for s in self.scales]
        sides = [self.size if abs(side - self.size) < 3 else side for side in sides]
        pairs = [(crop_h, crop_w) for i, crop_h in enumerate(sides) for j, crop_w in enumerate(sides)
                 if abs(i - j) <= self.max_distort]
        crop_h, crop_w = pairs[int(rng.integers(len(pairs)))]
        crop_h, crop_w = min(crop_h, resized_height), min(crop_w, resized_width)
        h_step = (resized_height - crop_h) // 4
        w_step = (resized_width - crop_w) // 4
        # (top, left): upper left, upper right, lower left, lower right, centre (TSN's order).
        offsets = [(0, 0), (0, 4 * w_step), (4 * h_step, 0), (4 * h_step, 4 * w_step), (2 * h_step, 2 * w_step)]
        top, left = offsets[int(rng.integers(len(offsets)))]
        return CropBox(top, left, crop_h, crop_w)

    def decode_size(self, height: int, width: int) -> tuple[int, int] | None:
        """The frame resized to ``short_side`` (None when that is not smaller): see the module docstring."""
        return _shrunk(height, width, self.short_side)

    def box(self, height: int, width: int, rng: np.random.Generator) -> CropBox:
        """The source box for a ``height`` x ``width`` frame."""
        resized_h, resized_w = resized_shape(height, width, self.short_side)
        return box_to_source(self.resized_box(resized_h, resized_w, rng), height, width, resized_h, resized_w)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3)."""
        box = self.box(frames.shape[1], frames.shape[2], rng)
        return crop_resize(frames, box, self.size, self.size, self.antialias)


class ResizedCenterCrop:
    """``Resize(short_side)`` then ``CenterCrop(size)`` (torchvision semantics) as one source box and one resize."""

    def __init__(self, size: int = 224, short_side: int = 256, antialias: bool = False) -> None:
        if size > short_side:
            raise ValueError(f"crop size {size} is larger than short_side {short_side}")
        self.size = size
        self.short_side = short_side
        self.antialias = antialias

    def decode_size(self, height: int, width: int) -> tuple[int, int] | None:
        """The frame resized to ``short_side`` (None when that is not smaller): see the module docstring."""
        return _shrunk(height, width, self.short_side)

    def box(self, height: int, width: int) -> CropBox:
        """The source box for a ``height`` x ``width`` frame (no randomness)."""
        resized_h, resized_w = resized_shape(height, width, self.short_side)
        # torchvision CenterCrop: int(round((image - crop) / 2)).
        top = int(round((resized_h - self.size) / 2.0))
        left = int(round((resized_w - self.size) / 2.0))
        return box_to_source(CropBox(top, left, self.size, self.size), height, width, resized_h, resized_w)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3); ``rng`` is not used."""
        box = self.box(frames.shape[1], frames.shape[2])
        return crop_resize(frames, box, self.size, self.size, self.antialias)


class Flip:
    """Mirror the whole clip left-right with probability ``p`` (one draw of ``rng.random()`` per clip)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def draw(self, rng: np.random.Generator) -> bool:
        """Whether this clip is mirrored; always one draw, so the generator advances the same way whatever p is."""
        return rng.random() < self.p

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 (T, H, W, 3) -> the same shape, mirrored or not."""
        return flip_clip(frames) if self.draw(rng) else frames


class MultiCrop:
    """Test-time spatial views: uint8 (T, H, W, 3) -> uint8 (V, T, size, size, 3), V = ``num_crops``.

    - 1: the centre crop of ``ResizedCenterCrop(size, short_side)`` (the val view).
    - 3: three squares whose side is the frame's short side, at the start, centre and end of the
      long side (left, centre, right; or top, centre, bottom), each resized to ``size``: the
      frame resized to short side ``size`` and cut into three ``size`` squares, as mmaction2's
      ``ThreeCrop``. ``short_side`` does not matter here.
    - 10: on the frame resized to ``short_side``, ``size`` squares at the upper left, upper
      right, lower left and lower right corners and the centre (the val crop), then the same 5
      mirrored, in torchvision's ``TenCrop`` order.
    """

    def __init__(self, num_crops: int = 1, size: int = 224, short_side: int = 256, antialias: bool = False) -> None:
        if num_crops not in TEST_CROPS:
            raise ValueError(f"num_crops must be one of {TEST_CROPS}, got {num_crops}")
        if size > short_side:
            raise ValueError(f"crop size {size} is larger than short_side {short_side}")
        self.num_crops = num_crops
        self.size = size
        self.short_side = short_side
        self.antialias = antialias

    def decode_size(self, height: int, width: int) -> tuple[int, int] | None:
        """The frame resized to short side ``size`` (3 crops) or ``short_side`` (1 and 10 crops), None
        when that is not smaller: see the module docstring."""
        return _shrunk(height, width, self.size if self.num_crops == 3 else self.short_side)

    def boxes(self, height: int, width: int) -> list[tuple[CropBox, bool]]:
        """(source box, mirrored) for every view, in view order."""
        if self.num_crops == 1:
            return [(ResizedCenterCrop(self.size, self.short_side).box(height, width), False)]
        if self.num_crops == 3:
            side = min(height, width)
            starts = (0, (max(height, width) - side) // 2, max(height, width) - side)
            if width >= height:
                return [(CropBox(0, start, side, side), False) for start in starts]
            return [(CropBox(start, 0, side, side), False) for start in starts]
        resized_h, resized_w = resized_shape(height, width, self.short_side)
        bottom, right = resized_h - self.size, resized_w - self.size
        centre = (int(round(bottom / 2.0)), int(round(right / 2.0)))
        corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), centre]
        five = [box_to_source(CropBox(top, left, self.size, self.size), height, width, resized_h, resized_w)
                for top, left in corners]
        return [(box, False) for box in five] + [(box, True) for box in five]

    def mirrored_views(self) -> list[bool]:
        """Which of the ``num_crops`` views are mirrored (the last 5 of 10)."""
        return [mirrored for _, mirrored in self.boxes(2 * self.short_side, 2 * self.short_side)]

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 (T, H, W, 3) -> uint8 (V, T, size, size, 3); ``rng`` is not used."""
        views = []
        for box, mirrored in self.boxes(frames.shape[1], frames.shape[2]):
            view = crop_resize(frames, box, self.size, self.size, self.antialias)
            views.append(flip_clip(view) if mirrored else view)
        return np.stack(views)  # (V, T, size, size, 3)


class ClipTransform:
    """Apply ``steps`` in order, each ``(frames, rng) -> frames``, all with the same generator."""

    def __init__(self, steps: Sequence[FrameTransform]) -> None:
        self.steps = tuple(steps)

    def decode_size(self, height: int, width: int) -> tuple[int, int] | None:
        """The first step's ``decode_size`` (later steps see only its fixed-size output), else None."""
        first = self.steps[0] if self.steps else None
        return first.decode_size(height, width) if isinstance(first, DecodesResized) else None

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.mirrored(frames, rng)[0]

    def mirrored(self, frames: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """The transformed frames, and whether a ``Flip`` step mirrored them (an odd number of times)."""
        mirrored = False
        for step in self.steps:
            if isinstance(step, Flip):
                flip = step.draw(rng)
                frames, mirrored = (flip_clip(frames), not mirrored) if flip else (frames, mirrored)
            else:
                frames = step(frames, rng)
        return frames, mirrored


def train_transform(kind: str = "random_resized_crop", input_size: int = 224, short_side: int = 256,
                    flip: bool = True, antialias: bool = False,
                    scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66)) -> ClipTransform:
    """Training preset: one random crop (``kind``) then, when ``flip``, a mirror with p = 0.5.

    ``random_resized_crop``: the seed article's recipe (scale 0.08-1, ratio 3/4-4/3); ``short_side``
    is not used. ``multiscale``: TSN's corner crops (``scales``, TSN's 1, .875, .75, .66 by default)
    on the frame resized to ``short_side``. ``antialias``: see the module docstring.
    """
    crop: FrameTransform
    if kind == "random_resized_crop":
        crop = RandomResizedCrop(input_size, antialias=antialias)
    elif kind == "multiscale":
        crop = MultiScaleCrop(input_size, short_side, scales=scales, antialias=antialias)
    else:
        raise ValueError(f"unknown train transform kind {kind!r}; expected one of {TRAIN_KINDS}")
    return ClipTransform((crop, Flip(0.5)) if flip else (crop,))


def val_transform(input_size: int = 224, short_side: int = 256, antialias: bool = False) -> ResizedCenterCrop:
    """Validation preset: resize the short side to ``short_side``, centre crop ``input_size``."""
    return ResizedCenterCrop(input_size, short_side, antialias)


def test_transform(num_crops: int = 1, input_size: int = 224, short_side: int = 256,
                   antialias: bool = False) -> MultiCrop:
    """Test preset: ``num_crops`` (1, 3 or 10) spatial views, output (V, T, input_size, input_size, 3)."""
    return MultiCrop(num_crops, input_size, short_side, antialias)


# pytest would collect the preset above as a test when a test module imports it by name.
test_transform.__test__ = False  # type: ignore[attr-defined]


def to_tensor_clip(frames: np.ndarray) -> torch.Tensor:
    """uint8 numpy ``(T, H, W, 3)`` or ``(V, T, H, W, 3)`` -> contiguous torch uint8 ``(T, 3, H, W)``
    or ``(V, T, 3, H, W)``."""
    if frames.ndim not in (4, 5) or frames.shape[-1] not in CHANNELS:
        raise ValueError(f"expected frames of shape (T, H, W, C) or (V, T, H, W, C), C = 3 or 2, got {frames.shape}")
    lead = list(range(frames.ndim - 3))
    # (..., H, W, C) -> (..., C, H, W): one copy by numpy, single-threaded; torch's permuted
    # copy of uint8 is slower, and more so with several threads on a busy CPU.
    planar = np.ascontiguousarray(frames.transpose(*lead, frames.ndim - 1, frames.ndim - 3, frames.ndim - 2))
    return torch.from_numpy(planar)
