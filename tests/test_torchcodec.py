"""The optional torchcodec backend: frame-exact where torchcodec runs (tests/test_frame_index.py reads the hard
files with it), a set-up error, never skipped videos, where it does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tsn.cli import user_error_message
from tsn.data.dataset import ClipDataset
from tsn.data.lists import VideoRecord
from tsn.data import transforms as T
from tsn.io import probe, read, torchcodec_backend
from tsn.io.base import BackendUnavailable
from videos import frame_index, make_bframe_index_video

needs_torchcodec = pytest.mark.skipif(not torchcodec_backend.available(),
                                      reason="torchcodec or its FFmpeg libraries absent")


@pytest.fixture
def missing_torchcodec(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchcodec as on a machine without it."""
    def absent() -> None:
        raise BackendUnavailable(f"data.backend torchcodec: torchcodec cannot be imported (No module named "
                                 f"'torchcodec'): {torchcodec_backend.INSTALL_HINT}")
    monkeypatch.setattr(torchcodec_backend, "_module", absent)


def test_without_torchcodec_every_read_is_a_setup_error_not_a_skipped_video(missing_torchcodec: None,
                                                                            tmp_path: Path) -> None:
    video = make_bframe_index_video(tmp_path / "v.mp4", 30)
    assert not torchcodec_backend.available()
    with pytest.raises(BackendUnavailable, match=r"pip install 'tsn\[torchcodec\]'"):
        probe(video, "torchcodec")
    dataset = ClipDataset([VideoRecord("v.mp4", 0)], tmp_path, "video", "torchcodec", "val", 3, 1,
                          T.val_transform(32, 32), on_error="skip")
    with pytest.raises(BackendUnavailable) as error:
        dataset[0]  # "skip" would otherwise pass over every video and fail at the end
    assert user_error_message(error.value).startswith("data.backend torchcodec: ")


@needs_torchcodec
def test_torchcodec_reads_the_frames_pyav_reads_also_resized(tmp_path: Path) -> None:
    video = make_bframe_index_video(tmp_path / "v.mp4", 90, gop=30, width=96, height=64)
    info = probe(video, "torchcodec")
    assert info.backend == "torchcodec" and info.num_frames == 90
    rng = np.random.default_rng(0)
    for _ in range(10):
        wanted = np.sort(rng.choice(90, size=8, replace=False))
        frames = read(video, wanted, "torchcodec", info)
        assert [frame_index(frame) for frame in frames] == wanted.tolist()
        reference = read(video, wanted, "pyav")
        assert np.abs(frames.astype(np.int16) - reference).mean() < 2.0
        small = read(video, wanted, "torchcodec", info, size=(32, 48))
        assert small.shape == (8, 32, 48, 3) and [frame_index(f) for f in small] == wanted.tolist()


@needs_torchcodec
def test_a_frame_that_is_not_the_one_asked_for_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    video = make_bframe_index_video(tmp_path / "v.mp4", 40)
    info = probe(video, "torchcodec")
    real = torchcodec_backend._seconds

    def one_frame_late(info, indices):  # ask for the next frame's time, as a wrong seek would land
        starts, middles = real(info, indices)
        return starts, real(info, np.minimum(indices + 1, info.num_frames - 1))[1]

    monkeypatch.setattr(torchcodec_backend, "_seconds", one_frame_late)
    with pytest.raises(Exception, match="asked for frame 5"):
        read(video, [5], "torchcodec", info)
