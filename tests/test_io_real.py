"""tsn.io on the real files in ../shared/data/real: every video probes and reads, and probe's num_frames equals
the count of a full decode.

The reference is one sequential OpenCV pass per file (``grab()`` for every frame, ``retrieve()`` only for the
frames compared), independent of ``probe``'s shortcut (decord's index, OpenCV's seek to the claimed end). The
animated GIFs under clips/ count as videos: decord cannot open them, OpenCV (FFmpeg's GIF decoder) reads them, so
they go through the "auto" fallback.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tsn.io import probe, read, read_first

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".gif"}
# decord and OpenCV convert YUV to RGB with different FFmpeg builds: identical on the H.264 clips here, off by 1
# on the Xvid one. A neighbouring frame differs by far more somewhere in the picture.
MAX_PIXEL_DIFFERENCE = 3


def full_decode(path: Path, keep: set[int]) -> tuple[int, dict[int, np.ndarray]]:
    """Frames that decode in one sequential pass, and the RGB frames whose index is in ``keep``."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
    count, kept = 0, {}
    while capture.grab():
        if count in keep:
            ok, frame = capture.retrieve()
            assert ok
            kept[count] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        count += 1
    capture.release()
    return count, kept


def problems_of(path: Path, backend: str | None = None) -> list[str]:
    """What is wrong with reading ``path`` through tsn.io (empty when all is well); ``backend``: the one
    that must answer "auto"."""
    info = probe(path)
    if backend is not None and info.backend != backend:
        return [f"{path}: read by {info.backend}, not {backend}"]
    last = info.num_frames - 1
    wanted = [last, 0, last // 2, last // 2]
    frames = read(path, wanted, backend=info.backend, info=info)  # no fallback that could hide a failure
    count, reference = full_decode(path, set(wanted))
    problems = []
    if count != info.num_frames:
        problems.append(f"{path}: probe ({info.backend}) says {info.num_frames} frames, a full decode gives {count}")
    if frames.shape != (len(wanted), info.height, info.width, 3) or frames.dtype != np.uint8:
        problems.append(f"{path}: read gave {frames.dtype} {frames.shape}, probe said {info}")
        return problems
    for frame, index in zip(frames, wanted):
        if index in reference:
            difference = int(np.abs(frame.astype(np.int16) - reference[index]).max())
            if difference > MAX_PIXEL_DIFFERENCE:
                problems.append(f"{path}: frame {index} by {info.backend} differs from the sequential decode's "
                                f"by up to {difference}")
    if info.fps <= 0:
        problems.append(f"{path}: fps {info.fps}")
    return problems


def videos_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file())


@pytest.mark.real
def test_every_real_clip_probes_reads_and_counts_like_a_full_decode(real_data: Path) -> None:
    clips = videos_under(real_data / "clips")
    assert {path.suffix for path in clips} == {".mp4", ".avi", ".mkv", ".gif"}
    assert [problem for path in clips for problem in problems_of(path)] == []


@pytest.mark.real
def test_every_actrecog2_video_probes_reads_and_counts_like_a_full_decode(real_data: Path) -> None:
    videos = [path for split in ("train", "val", "test") for path in videos_under(real_data / "actrecog2" / split)]
    assert len(videos) == 69  # 49 + 15 + 5, as the lists say
    assert [problem for path in videos for problem in problems_of(path, "pyav")] == []


def first_read_problems(path: Path) -> list[str]:
    """Where ``read_first`` (probe folded into the first read) differs from ``probe`` then ``read``."""
    def choose(num_frames: int) -> np.ndarray:
        return np.array([num_frames // 2, 0, num_frames // 7, num_frames * 6 // 7])

    def size_for(height: int, width: int) -> tuple[int, int]:
        return height // 3, width // 3

    info, indices, frames = read_first(path, choose, "auto", size_for)
    expected_info = probe(path)
    expected = read(path, choose(expected_info.num_frames), "auto", expected_info,
                    size_for(expected_info.height, expected_info.width))
    if (info, indices.tolist()) != (expected_info, choose(expected_info.num_frames).tolist()):
        return [f"{path}: read_first found {info} and chose {indices.tolist()}, probe says {expected_info}"]
    if frames.shape != expected.shape or not np.array_equal(frames, expected):
        return [f"{path}: read_first's frames differ from read's"]
    return []


@pytest.mark.real
def test_first_read_of_every_real_clip_equals_probe_then_read(real_data: Path) -> None:
    # The containers and codecs of clips/, and the H.264 AVI (decord refuses it) among them.
    clips = videos_under(real_data / "clips")
    assert [problem for path in clips for problem in first_read_problems(path)] == []
