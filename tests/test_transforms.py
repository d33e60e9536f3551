"""Clip transforms: one crop and one flip per clip, exact boxes, crop-then-resize == resize-then-crop."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from tsn.data import transforms as T
from tsn.data.transforms import CropBox


class Draws:
    """Stands in for np.random.Generator and returns the given draws in order (checking their range)."""

    def __init__(self, uniforms: list[float] = (), integers: list[int] = (), randoms: list[float] = ()) -> None:
        self.uniforms, self.ints, self.randoms = list(uniforms), list(integers), list(randoms)

    def uniform(self, low: float, high: float) -> float:
        value = self.uniforms.pop(0)
        assert low <= value <= high
        return value

    def integers(self, low: int, high: int | None = None) -> int:
        low, high = (0, low) if high is None else (low, high)
        value = self.ints.pop(0)
        assert low <= value < high
        return value

    def random(self) -> float:
        return self.randoms.pop(0)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, asymmetric RGB uint8 image (upsampled noise), so that every crop and flip looks different."""
    noise = np.random.default_rng(seed).integers(0, 256, size=(6, 8, 3)).astype(np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def stamped_clip(num_frames: int, height: int, width: int) -> np.ndarray:
    """Frames with identical red and green channels; blue is the constant 20 * t, stamping the frame index."""
    base = smooth_image(height, width)
    frames = np.repeat(base[None], num_frames, axis=0)
    frames[..., 2] = (20 * np.arange(num_frames, dtype=np.uint8))[:, None, None]
    return frames


@pytest.mark.parametrize("kind", T.TRAIN_KINDS)
def test_one_crop_and_one_flip_per_clip(kind: str) -> None:
    frames = stamped_clip(6, 60, 80)
    transform = T.train_transform(kind, input_size=32, short_side=40)
    crop = transform.steps[0]
    flipped_count = 0
    for seed in range(40):
        out = transform(frames, np.random.default_rng(seed))
        assert out.shape == (6, 32, 32, 3) and out.dtype == np.uint8
        # Every frame shows the same region (red, green) and keeps its own stamp, in order (blue).
        assert (out[:, :, :, :2] == out[:1, :, :, :2]).all()
        assert (out[:, :, :, 2] == (20 * np.arange(6))[:, None, None]).all()
        # The output is the drawn box resized, mirrored or not, for the whole clip.
        box = crop.box(60, 80, np.random.default_rng(seed))
        plain = T.crop_resize(frames, box, 32, 32)
        if (out == plain).all():
            continue
        assert (out == plain[:, :, ::-1]).all()
        flipped_count += 1
    assert 10 < flipped_count < 30


def test_random_resized_crop_exact_boxes() -> None:
    crop = T.RandomResizedCrop(224)
    # First try fits: area 0.5 * 100*200 = 10000 at aspect 1 -> 100x100 at (0, 37).
    assert crop.box(100, 200, Draws([0.5, 0.0], [0, 37])) == CropBox(0, 37, 100, 100)
    # Aspect 4/3 at area 0.3 * 200*300 = 18000: w = round(sqrt(24000)) = 155, h = round(sqrt(13500)) = 116.
    assert crop.box(200, 300, Draws([0.3, math.log(4 / 3)], [84, 145])) == CropBox(84, 145, 116, 155)
    # Ten misses (area 1 at aspect 4/3 never fits) -> centre crop fallback.
    misses = [1.0, math.log(4 / 3)] * 10
    assert crop.box(100, 100, Draws(misses)) == CropBox(0, 0, 100, 100)  # ratio inside: whole frame
    assert crop.box(100, 400, Draws(misses)) == CropBox(0, 133, 100, 133)  # too wide: w = round(100 * 4/3)
    assert crop.box(400, 100, Draws(misses)) == CropBox(133, 0, 133, 100)  # too tall: h = round(100 / (3/4))


def test_random_resized_crop_seeded_boxes_are_reproducible_and_inside() -> None:
    crop = T.RandomResizedCrop(224)
    boxes = [crop.box(48, 64, np.random.default_rng(seed)) for seed in range(200)]
    assert boxes == [crop.box(48, 64, np.random.default_rng(seed)) for seed in range(200)]
    for box in boxes:
        assert box.top >= 0 and box.left >= 0 and box.top + box.height <= 48 and box.left + box.width <= 64
        assert 0.08 * 48 * 64 * 0.8 <= box.height * box.width
    assert len(set(boxes)) > 150


def test_multiscale_crop_exact_boxes() -> None:
    crop = T.MultiScaleCrop(224, short_side=256)
    # 256x340 is already at short side 256, so source boxes equal TSN's boxes. Sides: 256, 224,
    # 192, int(256 * .66) = 168; (h, w) pairs at most one scale apart, in TSN's order:
    pairs = [(256, 256), (256, 224), (224, 256), (224, 224), (224, 192), (192, 224), (192, 192),
             (192, 168), (168, 192), (168, 168)]
    # Pair (224, 192), upper right: h_step = (256-224)//4 = 8, w_step = (340-192)//4 = 37.
    assert crop.box(256, 340, Draws(integers=[4, 1])) == CropBox(0, 148, 224, 192)
    # Pair (168, 168), centre: steps 22 and 43 -> (44, 86).
    assert crop.box(256, 340, Draws(integers=[9, 4])) == CropBox(44, 86, 168, 168)
    # Pair (192, 168), lower left: h_step 16 -> top 64.
    assert crop.box(256, 340, Draws(integers=[7, 2])) == CropBox(64, 0, 192, 168)
    expected = set()
    for h, w in pairs:
        hs, ws = (256 - h) // 4, (340 - w) // 4
        for top, left in [(0, 0), (0, 4 * ws), (4 * hs, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws)]:
            expected.add(CropBox(top, left, h, w))
    seen = {crop.box(256, 340, np.random.default_rng(seed)) for seed in range(1000)}
    assert seen == expected


def test_multiscale_crop_maps_boxes_to_source() -> None:
    crop = T.MultiScaleCrop(224, short_side=256)
    # 1080x1440 is 256x341 at short side 256 (scale 4.21875 down, 4.2229 across); pair (224, 224)
    # at the centre: steps 8 and 29 -> (16, 58, 224, 224) on the resized frame.
    assert crop.resized_box(256, 341, Draws(integers=[3, 4])) == CropBox(16, 58, 224, 224)
    # 16 * 4.21875 = 67.5 -> 68, 240 * 4.21875 = 1012.5 -> 1013; 58 * 1440/341 = 244.9 -> 245,
    # 282 * 1440/341 = 1190.8 -> 1191.
    assert crop.box(1080, 1440, Draws(integers=[3, 4])) == CropBox(68, 245, 945, 946)


def test_val_crop_exact_boxes() -> None:
    crop = T.val_transform(224, 256)
    # 48x64 -> 256x341: centre crop at (16, round(58.5) = 58) -> source rows 3..45, columns
    # round(58 * 64/341) = 11 .. round(282 * 64/341) = 53.
    assert crop.box(48, 64) == CropBox(3, 11, 42, 42)
    assert crop.box(64, 48) == CropBox(11, 3, 42, 42)
    # 1080x1920 -> 256x455: (16, round(115.5) = 116) -> rows 68..1013, columns 489..1435.
    assert crop.box(1080, 1920) == CropBox(68, 489, 945, 946)
    # short_side = input_size = frame's short side on a square frame: the whole frame, untouched.
    frames = stamped_clip(3, 64, 64)
    assert T.val_transform(64, 64).box(64, 64) == CropBox(0, 0, 64, 64)
    assert (T.val_transform(64, 64)(frames, np.random.default_rng(0)) == frames).all()


def test_three_crop_exact_boxes() -> None:
    crop = T.test_transform(3, 224, 256)
    assert crop.boxes(48, 64) == [(CropBox(0, 0, 48, 48), False), (CropBox(0, 8, 48, 48), False),
                                  (CropBox(0, 16, 48, 48), False)]
    assert crop.boxes(64, 48) == [(CropBox(0, 0, 48, 48), False), (CropBox(8, 0, 48, 48), False),
                                  (CropBox(16, 0, 48, 48), False)]
    assert crop.boxes(41, 60) == [(CropBox(0, 0, 41, 41), False), (CropBox(0, 9, 41, 41), False),
                                  (CropBox(0, 19, 41, 41), False)]


def test_ten_crop_exact_boxes_and_pixels() -> None:
    crop = T.test_transform(10, 224, 256)
    five = [CropBox(0, 0, 224, 224), CropBox(0, 116, 224, 224), CropBox(32, 0, 224, 224),
            CropBox(32, 116, 224, 224), CropBox(16, 58, 224, 224)]
    assert crop.boxes(256, 340) == [(box, False) for box in five] + [(box, True) for box in five]
    frames = stamped_clip(2, 256, 340)
    out = crop(frames, np.random.default_rng(0))
    assert out.shape == (10, 2, 224, 224, 3) and out.dtype == np.uint8
    for view, box in enumerate(five):
        region = frames[:, box.top:box.top + 224, box.left:box.left + 224]
        assert (out[view] == region).all()
        assert (out[view + 5] == region[:, :, ::-1]).all()
    # The centre view is the val view.
    assert (out[4] == T.val_transform(224, 256)(frames, np.random.default_rng(0))).all()


def test_one_crop_is_the_val_crop() -> None:
    frames = stamped_clip(3, 48, 64)
    out = T.test_transform(1, 32, 40)(frames, np.random.default_rng(0))
    assert out.shape == (1, 3, 32, 32, 3)
    assert (out[0] == T.val_transform(32, 40)(frames, np.random.default_rng(0))).all()


@pytest.mark.parametrize(("height", "width"), [(480, 640), (240, 320), (1080, 1440)])
def test_crop_then_resize_matches_resize_then_crop(height: int, width: int) -> None:
    # Whole-pixel source boxes move edges by at most half a source pixel: small next to the
    # output pixel when the source is at least about the size of the resized frame.
    frames = smooth_image(height, width, seed=3)[None]
    resized_h, resized_w = T.resized_shape(height, width, 256)
    resized = cv2.resize(frames[0], (resized_w, resized_h), interpolation=cv2.INTER_LINEAR)
    # Val: resize 256, centre crop 224.
    top, left = int(round((resized_h - 224) / 2)), int(round((resized_w - 224) / 2))
    reference = resized[top:top + 224, left:left + 224].astype(np.int16)
    ours = T.val_transform(224, 256)(frames, np.random.default_rng(0))[0].astype(np.int16)
    assert np.abs(ours - reference).mean() < 0.75 and np.abs(ours - reference).max() <= 4
    # Multi-scale: TSN crops the resized frame and resizes the crop to 224.
    crop = T.MultiScaleCrop(224, 256)
    for seed in range(5):
        box = crop.resized_box(resized_h, resized_w, np.random.default_rng(seed))
        region = resized[box.top:box.top + box.height, box.left:box.left + box.width]
        reference = cv2.resize(region, (224, 224), interpolation=cv2.INTER_LINEAR).astype(np.int16)
        ours = crop(frames, np.random.default_rng(seed))[0].astype(np.int16)
        assert np.abs(ours - reference).mean() < 0.75 and np.abs(ours - reference).max() <= 4


def test_antialias_uses_area_only_when_shrinking_a_lot() -> None:
    frames = np.zeros((1, 1080, 1920, 3), dtype=np.uint8)
    frames[:, :, ::2] = 255  # one-pixel stripes: bilinear at a 4.7x shrink aliases, area averages
    smooth = T.val_transform(224, 256, antialias=True)(frames, np.random.default_rng(0))
    # Each output pixel averages 4.2 columns: 2 or 2.2 of them white -> 121..134.
    assert np.abs(smooth.astype(int) - 128).max() <= 8
    plain = T.val_transform(224, 256)(frames, np.random.default_rng(0))
    assert plain.shape == smooth.shape == (1, 224, 224, 3)
    assert np.abs(plain.astype(int) - 128).max() > 50


def test_flip_probability_edges() -> None:
    frames = stamped_clip(2, 8, 10)
    assert (T.Flip(0.0)(frames, np.random.default_rng(0)) == frames).all()
    assert (T.Flip(1.0)(frames, np.random.default_rng(0)) == frames[:, :, ::-1]).all()
    assert (T.Flip(0.5)(frames, Draws(randoms=[0.49])) == frames[:, :, ::-1]).all()
    assert (T.Flip(0.5)(frames, Draws(randoms=[0.5])) == frames).all()


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown train transform kind 'crop'"):
        T.train_transform("crop")
    with pytest.raises(ValueError, match="num_crops must be one of"):
        T.test_transform(5)
    with pytest.raises(ValueError, match="larger than short_side"):
        T.val_transform(300, 256)
    with pytest.raises(ValueError, match="outside a 10x10 frame"):
        T.crop_resize(np.zeros((1, 10, 10, 3), np.uint8), CropBox(5, 5, 6, 5), 4, 4)


def test_to_tensor_clip_layout() -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    clip = T.to_tensor_clip(frames)
    assert clip.shape == (4, 3, 5, 6) and clip.dtype == torch.uint8 and clip.is_contiguous()
    assert torch.equal(clip, torch.from_numpy(frames).permute(0, 3, 1, 2))
    views = T.to_tensor_clip(np.stack([frames, frames[:, :, ::-1]]))
    assert views.shape == (2, 4, 3, 5, 6) and views.is_contiguous()
    assert torch.equal(views[1], torch.from_numpy(frames[:, :, ::-1].copy()).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"expected frames of shape"):
        T.to_tensor_clip(frames[0])
