"""ClipDataset and the loader: exact frames, layouts, skip/raise on bad files, determinism across workers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist

from tsn.data import transforms as T
from tsn.data.dataset import AllVideosFailedError, ClipDataset, ClipKey, SkippedVideo, collate_clips
from tsn.data.lists import VideoRecord
from tsn.data.loader import build_dataloader, set_loader_epoch
from tsn.data.sampling import test_indices, train_indices, val_indices
from tsn.io import VideoReadError
from tsn.layout import normalize_clips
from badfiles import OVERSTATED_GOOD, make_overstated_avi
from videos import frame_index, index_frame, make_index_video

SIZE = 64  # square frames: val_transform(SIZE, SIZE) keeps the whole frame, so indices stay readable
LENGTHS = {"a.mp4": 40, "b.mp4": 30, "c.mp4": 50, "d.mp4": 24}
IDENTITY = T.ClipTransform(())
WHOLE_FRAME = T.val_transform(SIZE, SIZE)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Index videos a..d, a 20-frame rawframe folder, a zero-byte .mp4 and a text file named .mp4."""
    root = tmp_path_factory.mktemp("clips")
    for name, length in LENGTHS.items():
        make_index_video(root / name, length, SIZE, SIZE)
    frames_dir = root / "frames" / "a"
    frames_dir.mkdir(parents=True)
    for i in range(20):
        frame = cv2.cvtColor(index_frame(i, SIZE, SIZE), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(frames_dir / f"img_{i + 1:05d}.jpg"), frame)
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("not a video\n")
    return root


def good_records() -> list[VideoRecord]:
    return [VideoRecord(name, label) for label, name in enumerate(LENGTHS)]


def indices_of(clip: torch.Tensor) -> list[int]:
    """Frame indices encoded in a uint8 clip (..., T, 3, H, W), flattened."""
    frames = clip.reshape(-1, *clip.shape[-3:]).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    return [frame_index(frame) for frame in frames]


def test_val_samples_are_the_val_frames(root: Path) -> None:
    dataset = ClipDataset(good_records(), root, "video", "auto", "val", 3, 2, WHOLE_FRAME)
    assert len(dataset) == 4
    for i, (name, length) in enumerate(LENGTHS.items()):
        sample = dataset[i]
        assert sample.clip.shape == (6, 3, SIZE, SIZE) and sample.clip.dtype == torch.uint8
        assert (sample.label, sample.index, sample.skipped) == (i, i, ())
        assert indices_of(sample.clip) == val_indices(length, 3, 2).tolist()


def test_train_samples_depend_on_seed_epoch_and_index_only(root: Path) -> None:
    dataset = ClipDataset(good_records(), root, "video", "opencv", "train", 4, 1, IDENTITY, seed=11)
    # The documented generator: default_rng([seed, epoch, index, video]).
    expected = train_indices(50, 4, 1, rng=np.random.default_rng([11, 3, 2, 2])).tolist()
    assert indices_of(dataset[ClipKey(3, 2)].clip) == expected
    dataset.set_epoch(3)
    assert indices_of(dataset[2].clip) == expected
    per_epoch = [indices_of(dataset[ClipKey(epoch, 2)].clip) for epoch in range(4)]
    assert len({tuple(indices) for indices in per_epoch}) > 1


@pytest.mark.parametrize("backend", ["auto", "decord", "opencv"])
def test_first_read_of_a_video_gives_the_same_sample_as_later_reads(root: Path, tmp_path: Path,
                                                                  backend: str) -> None:
    # The first read probes in the same pass (tsn.io.read_first); for the AVI that overstates its
    # frame count ("auto" only) that pass fails and the indices are drawn again from the same generator.
    overstated = make_overstated_avi(tmp_path)
    records = good_records() + ([VideoRecord(str(overstated), 7)] if backend == "auto" else [])
    transform = T.train_transform("multiscale", 32, 48)  # random box and flip, decoded at short side 48
    first = ClipDataset(records, root, "video", backend, "train", 3, 1, transform, seed=5)
    again = ClipDataset(records, root, "video", backend, "train", 3, 1, transform, seed=5)
    for index in range(len(records)):
        again[ClipKey(0, index)]  # probed here; the samples below are all later reads for ``again``
    for epoch in range(2):
        for index in range(len(records)):
            sample = first[ClipKey(epoch, index)]
            assert torch.equal(sample.clip, again[ClipKey(epoch, index)].clip), (epoch, index)
            assert sample.skipped == ()
    for index, record in enumerate(records):
        assert first.num_frames(index) == LENGTHS.get(record.path, OVERSTATED_GOOD)


def test_rawframes_use_the_list_frame_count(root: Path) -> None:
    records = [VideoRecord("frames/a", 5, num_frames=20)]
    dataset = ClipDataset(records, root, "rawframes", "decord", "val", 5, 1, WHOLE_FRAME)
    sample = dataset[0]
    assert sample.clip.shape == (5, 3, SIZE, SIZE) and sample.label == 5
    assert indices_of(sample.clip) == val_indices(20, 5, 1).tolist() == [2, 6, 10, 14, 18]


def test_test_mode_views_are_clip_major(root: Path) -> None:
    dataset = ClipDataset(good_records(), root, "video", "auto", "test", 3, 1, T.test_transform(3, SIZE, SIZE),
                          num_clips=2)
    sample = dataset[2]
    assert sample.clip.shape == (6, 3, 3, SIZE, SIZE)  # V = 2 clips x 3 crops, T = 3
    table = test_indices(50, 3, 1, 2)
    for view in range(6):
        assert indices_of(sample.clip[view]) == table[view // 3].tolist()
    single = ClipDataset(good_records(), root, "video", "auto", "test", 3, 1, WHOLE_FRAME, num_clips=2)
    assert single[2].clip.shape == (2, 3, 3, SIZE, SIZE)
    assert indices_of(single[2].clip) == table.reshape(-1).tolist()


def test_float_output_is_normalised(root: Path) -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    plain = ClipDataset(good_records(), root, "video", "auto", "val", 2, 1, T.val_transform(32, 40))
    normed = ClipDataset(good_records(), root, "video", "auto", "val", 2, 1, T.val_transform(32, 40),
                         mean=mean, std=std)
    clip = normed[1].clip
    assert clip.dtype == torch.float32 and clip.shape == (2, 3, 32, 32)
    torch.testing.assert_close(clip, normalize_clips(plain[1].clip, mean, std))


def test_skip_returns_another_video_with_its_own_label(root: Path) -> None:
    records = [VideoRecord("a.mp4", 0), VideoRecord("empty.mp4", 1), VideoRecord("missing.mp4", 2),
               VideoRecord("c.mp4", 3), VideoRecord("text.mp4", 4)]
    dataset = ClipDataset(records, root, "video", "auto", "val", 3, 1, WHOLE_FRAME, on_error="skip")
    sample = dataset[1]
    # Videos 1 and 2 are bad: the sample is video 3, with video 3's label and frames.
    assert (sample.label, sample.index) == (3, 3)
    assert indices_of(sample.clip) == val_indices(50, 3, 1).tolist()
    assert [skip.path for skip in sample.skipped] == [str(root / "empty.mp4"), str(root / "missing.mp4")]
    assert all(isinstance(skip, SkippedVideo) and skip.reason for skip in sample.skipped)
    # Known-bad videos are still reported every time they are passed over (not decoded again).
    assert dataset[2].skipped == sample.skipped[1:] and dataset[2].label == 3
    # The last video is bad: wrap around to the first.
    last = dataset[4]
    assert (last.label, last.index) == (0, 0) and [s.path for s in last.skipped] == [str(root / "text.mp4")]
    assert dataset[0].skipped == () and dataset[3].skipped == ()


def test_raise_names_the_file(root: Path) -> None:
    records = [VideoRecord("a.mp4", 0), VideoRecord("empty.mp4", 1)]
    dataset = ClipDataset(records, root, "video", "auto", "val", 3, 1, WHOLE_FRAME, on_error="raise")
    assert dataset[0].label == 0
    with pytest.raises(VideoReadError, match="empty.mp4") as caught:
        dataset[1]
    assert caught.value.path == str(root / "empty.mp4") and caught.value.reason


def test_rawframes_with_missing_frames_are_skipped(root: Path) -> None:
    records = [VideoRecord("frames/a", 0, num_frames=30), VideoRecord("frames/a", 1, num_frames=20)]
    dataset = ClipDataset(records, root, "rawframes", "auto", "val", 3, 1, WHOLE_FRAME)
    sample = dataset[0]  # the list claims 30 frames; the folder holds 20, so frame 25 is missing
    assert (sample.label, sample.index) == (1, 1) and sample.skipped[0].path == str(root / "frames" / "a")


def test_every_video_bad_is_a_clear_error(root: Path) -> None:
    records = [VideoRecord("empty.mp4", 0), VideoRecord("missing.mp4", 1)]
    dataset = ClipDataset(records, root, "video", "auto", "val", 3, 1, WHOLE_FRAME)
    with pytest.raises(AllVideosFailedError, match=r"all 2 videos .* failed to load \(first: .*missing.mp4: "):
        dataset[1]


def test_bad_arguments(root: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        ClipDataset(good_records(), root, "video", "auto", "eval", 3, 1, WHOLE_FRAME)
    with pytest.raises(ValueError, match="on_error must be one of"):
        ClipDataset(good_records(), root, "video", "auto", "val", 3, 1, WHOLE_FRAME, on_error="ignore")
    with pytest.raises(ValueError, match="num_clips=2 needs mode 'test'"):
        ClipDataset(good_records(), root, "video", "auto", "val", 3, 1, WHOLE_FRAME, num_clips=2)
    with pytest.raises(ValueError, match="both mean and std"):
        ClipDataset(good_records(), root, "video", "auto", "val", 3, 1, WHOLE_FRAME, mean=(0.5, 0.5, 0.5))
    with pytest.raises(IndexError, match="index 4 out of range for 4 videos"):
        ClipDataset(good_records(), root, "video", "auto", "val", 3, 1, WHOLE_FRAME)[4]


def test_collate(root: Path) -> None:
    records = good_records() + [VideoRecord("empty.mp4", 7)]
    dataset = ClipDataset(records, root, "video", "auto", "val", 2, 1, T.val_transform(32, 48))
    batch = collate_clips([dataset[4], dataset[1]])
    assert batch.clips.shape == (2, 2, 3, 32, 32) and batch.clips.dtype == torch.uint8
    assert batch.labels.tolist() == [0, 1] and batch.indices.tolist() == [0, 1]
    assert batch.labels.dtype == batch.indices.dtype == torch.int64
    assert [skip.path for skip in batch.skipped] == [str(root / "empty.mp4")]


def epoch_batches(loader: torch.utils.data.DataLoader, epochs: range) -> list[list[tuple]]:
    out = []
    for epoch in epochs:
        set_loader_epoch(loader, epoch)
        out.append([(b.clips, b.labels.tolist(), b.indices.tolist(), b.skipped) for b in loader])
    return out


def assert_same(first: list[list[tuple]], second: list[list[tuple]]) -> None:
    assert len(first) == len(second)
    for batches_a, batches_b in zip(first, second):
        assert [b[1:] for b in batches_a] == [b[1:] for b in batches_b]
        for a, b in zip(batches_a, batches_b):
            assert torch.equal(a[0], b[0])


def test_loader_same_batches_for_any_worker_count_and_new_ones_each_epoch(root: Path) -> None:
    records = good_records() + [VideoRecord("empty.mp4", 9)] + good_records()
    dataset = ClipDataset(records, root, "video", "auto", "train", 3, 1, T.train_transform("multiscale", 32, 48),
                          seed=4)
    serial = epoch_batches(build_dataloader(dataset, 3, True, 0, seed=1, drop_last=False), range(3))
    parallel_loader = build_dataloader(dataset, 3, True, 2, seed=1, drop_last=False)
    assert parallel_loader.persistent_workers
    parallel = epoch_batches(parallel_loader, range(3))
    assert_same(serial, parallel)
    for epoch in serial:
        # Request 4 (the empty file) gets video 5 with video 5's label; the skip is reported once.
        assert sorted(i for batch in epoch for i in batch[2]) == [0, 1, 2, 3, 5, 5, 6, 7, 8]
        assert [s.path for batch in epoch for s in batch[3]] == [str(root / "empty.mp4")]
        for _, labels, indices, _ in epoch:
            assert labels == [records[i].label for i in indices]
    # Another epoch: another order and other crops for the same video.
    assert [b[2] for b in serial[0]] != [b[2] for b in serial[1]]
    first = {i: clip for clips, _, indices, _ in serial[0] for i, clip in zip(indices, clips)}
    second = {i: clip for clips, _, indices, _ in serial[1] for i, clip in zip(indices, clips)}
    assert sum(not torch.equal(first[i], second[i]) for i in first) >= 6


def test_loader_drop_last_and_order(root: Path) -> None:
    dataset = ClipDataset(good_records() * 2, root, "video", "auto", "val", 2, 1, T.val_transform(32, 48))
    loader = build_dataloader(dataset, 3, False, 0, seed=0, drop_last=True)
    assert len(loader) == 2
    assert [b.indices.tolist() for b in loader] == [[0, 1, 2], [3, 4, 5]]


def test_distributed_single_rank_matches_plain(root: Path, tmp_path: Path) -> None:
    transform = T.train_transform("multiscale", 32, 48)
    dataset = ClipDataset(good_records(), root, "video", "auto", "train", 2, 1, transform)
    plain = epoch_batches(build_dataloader(dataset, 2, True, 0, seed=3, drop_last=False), range(2))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = build_dataloader(dataset, 2, True, 0, seed=3, drop_last=False, distributed=True)
        assert_same(plain, epoch_batches(loader, range(2)))
    finally:
        dist.destroy_process_group()
