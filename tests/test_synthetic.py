"""The embedded demo data set: deterministic, valid lists, disjoint splits, reused when unchanged."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tsn.data.lists import read_class_names, read_video_list
from tsn.data.synthetic import CLASSES, demo_video_frames, make_demo_dataset

SMALL = dict(num_classes=3, videos_per_class_train=2, videos_per_class_val=1, num_frames=8, size=64)


def decode(path: Path) -> np.ndarray:
    """All frames of a video as RGB uint8 (T, H, W, 3), with OpenCV."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


def test_lists_classes_and_videos(tmp_path: Path) -> None:
    demo = make_demo_dataset(tmp_path / "demo", seed=7, **SMALL)
    assert demo.root == tmp_path / "demo"
    assert read_class_names(demo.classes) == ["ball_bouncing", "square_rotating", "triangle_growing"]
    train = read_video_list(demo.train_list)
    val = read_video_list(demo.val_list)
    assert [r.label for r in train] == [0, 0, 1, 1, 2, 2] and [r.label for r in val] == [0, 1, 2]
    assert train[3].path == "videos/square_rotating/train_001.mp4"
    for record in train + val:
        frames = decode(demo.root / record.path)
        assert frames.shape == (8, 64, 64, 3)
    # Train and val are different videos.
    assert not {r.path for r in train} & {r.path for r in val}
    assert np.abs(decode(demo.root / train[0].path).astype(int) - decode(demo.root / val[0].path)).mean() > 10


def test_same_seed_same_bytes_other_seed_other_frames(tmp_path: Path) -> None:
    first = make_demo_dataset(tmp_path / "a", seed=3, **SMALL)
    second = make_demo_dataset(tmp_path / "b", seed=3, **SMALL)
    other = make_demo_dataset(tmp_path / "c", seed=4, **SMALL)
    for record in read_video_list(first.train_list):
        assert (first.root / record.path).read_bytes() == (second.root / record.path).read_bytes()
        assert (decode(first.root / record.path) != decode(other.root / record.path)).any()
    assert first.train_list.read_text() == second.train_list.read_text()


def test_frames_follow_the_class_recipe() -> None:
    rng = np.random.default_rng([0, 0, 2, 0])
    frames = demo_video_frames(2, 4, 16, 64, rng)
    assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
    assert (frames == demo_video_frames(2, 4, 16, 64, np.random.default_rng([0, 0, 2, 0]))).all()
    # The triangle (saturated, unlike the background) grows over the clip.
    saturation = cv2.cvtColor(frames.reshape(-1, 64, 3), cv2.COLOR_RGB2HSV)[..., 1].reshape(16, 64, 64)
    shape_masks = saturation > 140
    assert shape_masks[0].sum() > 0 and shape_masks[0].sum() < shape_masks[-1].sum()  # the triangle grows


def test_reused_when_unchanged_and_redone_when_damaged(tmp_path: Path) -> None:
    demo = make_demo_dataset(tmp_path / "demo", **SMALL)
    video = demo.root / read_video_list(demo.train_list)[0].path
    stamp = video.stat().st_mtime_ns
    make_demo_dataset(tmp_path / "demo", **SMALL)
    assert video.stat().st_mtime_ns == stamp
    original = video.read_bytes()
    video.write_bytes(original[:100])  # truncated: the size no longer matches the manifest
    make_demo_dataset(tmp_path / "demo", **SMALL)
    assert video.read_bytes() == original
    # Other arguments are another data set: written again.
    make_demo_dataset(tmp_path / "demo", **{**SMALL, "num_classes": 2})
    assert read_class_names(demo.classes) == ["ball_bouncing", "square_rotating"]
    assert len(read_video_list(demo.train_list)) == 4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=f"num_classes must be in 1..{len(CLASSES)}"):
        make_demo_dataset("unused", num_classes=len(CLASSES) + 1)
    with pytest.raises(ValueError, match="multiple of 16"):
        make_demo_dataset("unused", size=72)
