"""The fast data path: OpenCV's verified decode plan, decoding at a reduced size, decoder threads,
the device prefetcher, and the benchmark functions (shapes and fields only: no timing assertions)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tsn.data import transforms as T
from tsn.data.dataset import ClipBatch, ClipDataset, ClipKey, decoder_threads
from tsn.data.lists import VideoRecord
from tsn.io import VideoReadError, opencv_backend, probe, read
from tsn.io.base import FrameIndex
from tsn.io.opencv_backend import PlanMismatch, frame_table, plan, read_planned, seek_start
from tsn.data.prefetch import DevicePrefetcher, channels_last_clips
from tsn.layout import normalize_clips
from videos import frame_index, index_frame, make_index_video

NUM_FRAMES = 200
GOP = 12  # OpenCV's MPEG-4 writer puts a keyframe every 12 frames
SEEK_HEAVY = [199, 5, 130, 60, 60, 131, 170]
SEQUENTIAL_HEAVY = list(range(0, 40, 3)) + [41]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """200-frame index videos: MPEG-4 in .mp4 (keyframe every 12 frames), MJPG in .avi (every frame a
    keyframe), and 128x96 and 128x128 MPEG-4 videos for decoding at a reduced size."""
    root = tmp_path_factory.mktemp("fast")
    return {
        "mp4": make_index_video(root / "long.mp4", NUM_FRAMES),
        "avi": make_index_video(root / "long.avi", NUM_FRAMES, fourcc="MJPG"),
        "big": make_index_video(root / "big.mp4", 60, width=128, height=96),
        "square": make_index_video(root / "square.mp4", 60, width=128, height=128),
    }


def indices_of(frames: np.ndarray) -> list[int]:
    return [frame_index(frame) for frame in frames]


def test_frame_table_holds_every_frame_timestamp_and_the_keyframes(videos: dict[str, Path]) -> None:
    table = frame_table(str(videos["mp4"]), NUM_FRAMES)
    assert table is not None
    np.testing.assert_allclose(table.keyframes, np.arange(0, NUM_FRAMES, GOP) * 40.0)
    np.testing.assert_allclose(table.stamps(), np.arange(NUM_FRAMES) * 40.0)  # 25 fps
    assert probe(videos["mp4"], "opencv").index.count == NUM_FRAMES  # probe builds it, reads keep it
    assert frame_table(str(videos["mp4"]), NUM_FRAMES - 1) is None  # a count that disagrees: no plan


def test_plan_seeks_only_when_the_seek_starts_after_the_current_position() -> None:
    table = FrameIndex.of(np.arange(NUM_FRAMES) * 40.0, np.arange(0, NUM_FRAMES, GOP) * 40.0, 1e-3)
    # OpenCV's seek to frame i decodes from the last keyframe at or before i - 16.
    assert [seek_start(table, i) for i in (0, 16, 27, 28, 199)] == [0, 0, 0, 12, 180]
    assert plan(table, np.array([5, 60, 130, 131, 170, 199])) == [False, True, True, False, True, True]
    assert plan(table, np.array(SEQUENTIAL_HEAVY)) == [False] * len(SEQUENTIAL_HEAVY)


@pytest.mark.parametrize("source", ["mp4", "avi"])
@pytest.mark.parametrize("wanted", [SEEK_HEAVY, SEQUENTIAL_HEAVY], ids=["seek-heavy", "sequential-heavy"])
def test_opencv_reads_exact_frames_with_the_plan(videos: dict[str, Path], source: str, wanted: list[int]) -> None:
    path = videos[source]
    info = probe(path, "opencv")
    assert indices_of(read(path, wanted, backend="opencv", info=info)) == wanted
    unique = np.unique(wanted)
    table = frame_table(str(path), info.num_frames)
    assert table is not None
    assert indices_of(read_planned(str(path), unique, info, table)) == unique.tolist()


def test_a_frame_that_is_not_where_the_table_says_stops_the_plan(videos: dict[str, Path]) -> None:
    path = str(videos["mp4"])
    info = probe(path, "opencv")
    table = frame_table(path, info.num_frames)
    assert table is not None
    shifted = FrameIndex.of(table.stamps() + 40.0, table.keyframes + 40.0, 1e-3)  # every frame claimed one later
    with pytest.raises(PlanMismatch, match="frame 60 should be at 2440.0 ms, got 2400.0 ms"):
        read_planned(path, np.array([60, 130]), info, shifted)
    # read_sorted falls back to the sequential pass (exact by construction) on a mismatch.
    assert indices_of(opencv_backend.read_sorted(path, np.array([60, 130]), replace(info, index=shifted))) == [60, 130]


def test_decord_decodes_at_the_asked_size(videos: dict[str, Path]) -> None:
    path = videos["big"]
    info = probe(path, "decord")
    wanted = [50, 3, 17, 3]
    small = read(path, wanted, backend="decord", info=info, size=(48, 64))
    full = read(path, wanted, backend="decord", info=info)
    assert small.shape == (4, 48, 64, 3) and full.shape == (4, 96, 128, 3)
    assert indices_of(small) == wanted
    reference = np.stack([cv2.resize(frame, (64, 48), interpolation=cv2.INTER_AREA) for frame in full])
    assert np.abs(small.astype(np.int16) - reference).mean() < 3.0
    # Backends that cannot scale while decoding return the video's own size, and so does decord
    # where it cannot decode at the asked size (it fails for frames 48 pixels wide).
    assert read(path, wanted, backend="opencv", size=(48, 64)).shape == (4, 96, 128, 3)
    square = read(videos["square"], wanted, backend="decord", size=(48, 48))
    assert square.shape == (4, 128, 128, 3) and indices_of(square) == wanted


@pytest.mark.parametrize("make", [
    lambda: T.MultiScaleCrop(32, 48),
    lambda: T.ResizedCenterCrop(32, 48),
    lambda: T.train_transform("multiscale", 32, 48),
    lambda: T.MultiCrop(10, 32, 48),
], ids=["multiscale", "centre", "train-preset", "ten-crop"])
def test_decode_size_is_the_resized_frame_and_gives_the_same_box(make) -> None:
    transform = make()
    assert isinstance(transform, T.DecodesResized)
    assert transform.decode_size(96, 128) == (48, 64)
    assert transform.decode_size(1350, 1080) == (60, 48)
    assert transform.decode_size(48, 64) is None and transform.decode_size(40, 64) is None  # never upscale
    crop = transform.steps[0] if isinstance(transform, T.ClipTransform) else transform
    if isinstance(crop, T.MultiScaleCrop):
        for seed in range(20):  # the box on the pre-resized frame is exactly TSN's box on the resized frame
            box = crop.box(60, 48, np.random.default_rng(seed))
            assert box == crop.resized_box(60, 48, np.random.default_rng(seed))


def test_three_crop_and_random_resized_crop_decode_sizes() -> None:
    assert T.MultiCrop(3, 32, 48).decode_size(96, 128) == (32, 42)  # short side to the crop size
    assert not isinstance(T.RandomResizedCrop(32), T.DecodesResized)
    assert T.train_transform("random_resized_crop", 32).decode_size(96, 128) is None


@pytest.mark.parametrize("name, size", [("square.mp4", 48), ("big.mp4", 32)], ids=["whole-frame", "centre-crop"])
def test_dataset_reads_at_the_decode_size_with_the_same_frames_and_crop(videos: dict[str, Path], name: str,
                                                                        size: int) -> None:
    root = videos["big"].parent
    transform = T.val_transform(size, 48)  # decode at short side 48, centre crop ``size``
    dataset = ClipDataset([VideoRecord(name, 0)], root, "video", "decord", "val", 4, 1, transform)
    got = dataset[0].clip.permute(0, 2, 3, 1).numpy()  # (4, 3, size, size) -> (4, size, size, 3)
    indices = dataset.frame_indices(0, np.random.default_rng(0))
    full = read(root / name, indices, backend="decord")  # the video's own size
    expected = transform(full, np.random.default_rng(0))  # (4, size, size, 3)
    assert got.shape == expected.shape == (4, size, size, 3)
    # Only the resampling filters differ (decord's scaler, cv2's bilinear): the same box within a
    # fraction of a pixel, closer than the box moved by one output pixel (2 source pixels).
    difference = np.abs(got.astype(np.int16) - expected).mean()
    assert difference < 4.0
    if name == "big.mp4":
        box = transform.box(96, 128)
        moved = T.crop_resize(full, box._replace(left=box.left + 2), size, size)
        assert difference < np.abs(got.astype(np.int16) - moved).mean()
    else:  # the whole (square) frame: the index pattern is readable
        assert [frame_index(frame) for frame in got] == indices.tolist()


def test_decoder_threads_share_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert decoder_threads() == cpus
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cpus))
    assert decoder_threads() == 1


def test_device_prefetcher_on_cpu_normalises_and_lays_out_channels_last() -> None:
    generator = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (2, 3, 3, 8, 8), dtype=torch.uint8, generator=generator)  # (B, T, C, H, W)
    batch = ClipBatch(clips, torch.tensor([0, 1]), torch.tensor([0, 1]), (), torch.tensor([0, 1]))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = list(DevicePrefetcher([batch, batch], torch.device("cpu"), mean, std, channels_last=True))
    assert len(out) == 2
    expected = normalize_clips(clips, mean, std)
    for item in out:
        assert item.clips.shape == (2, 3, 3, 8, 8) and torch.equal(item.clips, expected)
        assert item.clips.reshape(6, 3, 8, 8).is_contiguous(memory_format=torch.channels_last)
        assert item.labels.tolist() == [0, 1] and item.skipped == ()
    assert torch.equal(channels_last_clips(expected), expected)


def test_frame_folders_decode_on_several_threads_exactly(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(30):
        cv2.imwrite(str(folder / f"img_{i + 1:05d}.jpg"), cv2.cvtColor(index_frame(i), cv2.COLOR_RGB2BGR))
    wanted = [29, 0, 14, 14, 7, 21, 3, 28]
    info = probe(folder)
    for given in (None, info):
        assert indices_of(read(folder, wanted, backend="rawframes", info=given, threads=3)) == wanted
    (folder / "img_00015.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoReadError, match=r"img_00015\.jpg \(frame 14\) is missing or does not decode"):
        read(folder, wanted, backend="rawframes", info=info, threads=3)


def test_a_batch_read_at_once_is_the_samples_read_one_by_one(videos: dict[str, Path]) -> None:
    root = videos["big"].parent
    records = [VideoRecord("big.mp4", 0), VideoRecord("long.mp4", 1), VideoRecord("square.mp4", 0)]
    dataset = ClipDataset(records, root, "video", "auto", "train", 3, 1, T.train_transform("multiscale", 32, 48))
    keys = [ClipKey(1, 2), ClipKey(1, 0), ClipKey(1, 1), ClipKey(1, 0)]
    batch = dataset.__getitems__(keys)  # on several threads when this process has CPUs to spare
    assert [sample.index for sample in batch] == [2, 0, 1, 0]
    for key, sample in zip(keys, batch):
        assert torch.equal(sample.clip, dataset[key].clip)
