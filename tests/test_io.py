"""tsn.io: frame-exact reads for every backend, probe fields, fallback, overstated frame counts, bad inputs."""

from __future__ import annotations

import logging
import pickle
import re
import wave
from pathlib import Path
from typing import Callable

import cv2
import decord
import numpy as np
import pytest

from tsn.io import BACKENDS, RAWFRAME_TEMPLATE, VideoInfo, VideoReadError, iter_frames, probe, read, read_first
from tsn.io import pyav_backend
from tsn.io.decord_backend import timestamps_usable
from badfiles import movi_frame_chunks
from videos import frame_index, index_frame, make_bframe_index_video, make_index_video

NUM_FRAMES = 40
WIDTH, HEIGHT = 64, 48


def write_rawframes(folder: Path, num_frames: int, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """A frame folder img_00001.jpg ... whose frame i encodes i."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        cv2.imwrite(str(folder / RAWFRAME_TEMPLATE.format(i + 1)),
                    cv2.cvtColor(index_frame(i, width, height), cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 40-frame index video per container/codec, and the same frames as a frame folder."""
    root = tmp_path_factory.mktemp("io")
    return {
        "mp4": make_index_video(root / "v.mp4", NUM_FRAMES),
        "avi": make_index_video(root / "v.avi", NUM_FRAMES, fourcc="MJPG"),
        "frames": write_rawframes(root / "frames", NUM_FRAMES),
    }


# (backend asked for, source, backend that answers)
CASES = [
    ("pyav", "mp4", "pyav"),
    ("decord", "mp4", "decord"),
    ("opencv", "mp4", "opencv"),
    ("pyav", "avi", "pyav"),
    ("decord", "avi", "decord"),
    ("opencv", "avi", "opencv"),
    ("auto", "mp4", "pyav"),
    ("auto", "avi", "pyav"),
    ("rawframes", "frames", "rawframes"),
    ("auto", "frames", "rawframes"),
]
CASE_IDS = [f"{backend}-{source}" for backend, source, _ in CASES]


def indices_of(frames: np.ndarray) -> list[int]:
    return [frame_index(frame) for frame in frames]


@pytest.mark.parametrize("backend, source, answering", CASES, ids=CASE_IDS)
def test_probe_reports_size_verified_count_fps_and_backend(sources: dict[str, Path], backend: str, source: str,
                                                           answering: str) -> None:
    fps = 0.0 if answering == "rawframes" else 25.0
    assert probe(sources[source], backend) == VideoInfo(HEIGHT, WIDTH, NUM_FRAMES, fps, answering)


@pytest.mark.parametrize("backend, source, answering", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("with_info", [False, True], ids=["probe-inside", "info-given"])
def test_read_returns_exactly_the_requested_frames_in_order(sources: dict[str, Path], backend: str, source: str,
                                                            answering: str, with_info: bool) -> None:
    path = sources[source]
    info = probe(path, backend) if with_info else None
    wanted = [17, 3, 39, 3, 0, 17, 38, 39]  # unsorted, repeated, both ends
    frames = read(path, wanted, backend=backend, info=info)
    assert frames.dtype == np.uint8 and frames.shape == (len(wanted), HEIGHT, WIDTH, 3)
    assert indices_of(frames) == wanted


@pytest.mark.parametrize("backend, source, answering", CASES, ids=CASE_IDS)
def test_read_every_frame_from_numpy_indices(sources: dict[str, Path], backend: str, source: str,
                                             answering: str) -> None:
    wanted = np.arange(NUM_FRAMES, dtype=np.int32)
    assert indices_of(read(sources[source], wanted, backend=backend)) == list(range(NUM_FRAMES))


@pytest.mark.parametrize("backend, source, answering", CASES, ids=CASE_IDS)
def test_iter_frames_yields_every_frame_in_order(sources: dict[str, Path], backend: str, source: str,
                                                 answering: str) -> None:
    frames = list(iter_frames(sources[source], backend))
    assert all(frame.shape == (HEIGHT, WIDTH, 3) and frame.dtype == np.uint8 for frame in frames)
    assert indices_of(frames) == list(range(NUM_FRAMES))


@pytest.mark.parametrize("backend, source, answering", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("bad", [NUM_FRAMES, -1])
def test_index_outside_the_video_names_the_index(sources: dict[str, Path], backend: str, source: str,
                                                 answering: str, bad: int) -> None:
    with pytest.raises(VideoReadError) as caught:
        read(sources[source], [0, bad, 5], backend=backend)
    assert caught.value.reason == f"frame index {bad} outside [0, {NUM_FRAMES})"
    assert caught.value.path == str(sources[source])


def test_empty_indices_give_an_empty_clip(sources: dict[str, Path]) -> None:
    for backend, source in [("auto", "mp4"), ("opencv", "avi"), ("rawframes", "frames")]:
        frames = read(sources[source], [], backend=backend)
        assert frames.shape == (0, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8


def test_indices_must_be_a_1d_sequence_of_integers(sources: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="1-D"):
        read(sources["mp4"], [[0, 1]])
    with pytest.raises(TypeError, match="integers"):
        read(sources["mp4"], [0.0, 1.0])


def test_unknown_backend_is_a_value_error(sources: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        probe(sources["mp4"], "ffmpeg")
    assert BACKENDS == ("pyav", "decord", "opencv", "torchcodec", "rawframes")


def test_video_read_error_message_and_pickling() -> None:
    error = VideoReadError("a/b.mp4", "empty file (0 bytes)")
    assert str(error) == "a/b.mp4: empty file (0 bytes)"
    again = pickle.loads(pickle.dumps(error))
    assert (again.path, again.reason, str(again)) == (error.path, error.reason, str(error))


@pytest.mark.parametrize("width", [48, 72])
def test_odd_widths_decord_cannot_read_are_read_by_pyav(tmp_path: Path, width: int) -> None:
    path = make_index_video(tmp_path / f"odd{width}.mp4", 30, width=width, height=48)
    with pytest.raises(VideoReadError, match="The size must exactly match"):
        probe(path, "decord")
    info = probe(path)
    assert info == VideoInfo(48, width, 30, 25.0, "pyav")
    wanted = [29, 4, 4, 0]
    assert indices_of(read(path, wanted)) == wanted
    assert indices_of(read(path, wanted, info=info)) == wanted
    assert indices_of(read(path, [7, 2], size=(24, width // 2))) == [7, 2]


@pytest.fixture(scope="module")
def bframe_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """60-frame index videos with B-frames (some non-reference) and a keyframe every 12 frames."""
    root = tmp_path_factory.mktemp("bframes")
    return {
        "h264": make_bframe_index_video(root / "h264.mp4", 60),
        "h264-open-gop": make_bframe_index_video(root / "open.mp4", 60, open_gop=True),
        "hevc": make_bframe_index_video(root / "hevc.mkv", 60, codec="libx265"),
    }


@pytest.mark.parametrize("name", ["h264", "h264-open-gop", "hevc"])
def test_pyav_reads_exact_frames_of_b_frame_videos(bframe_videos: dict[str, Path], name: str) -> None:
    # PyAV skips the non-reference frames it is not asked for: the frames it returns must still be exact.
    path = bframe_videos[name]
    info = probe(path, "pyav")  # "pyav" alone: "auto" would hide a failure behind OpenCV
    assert info == VideoInfo(HEIGHT, WIDTH, 60, 25.0, "pyav")
    every = list(range(60))
    assert indices_of(read(path, every, "pyav", info)) == every
    assert [indices_of(read(path, [i], "pyav", info)) for i in every] == [[i] for i in every]
    rng = np.random.default_rng(0)
    for _ in range(40):
        wanted = rng.integers(0, 60, size=int(rng.integers(1, 10))).tolist()
        assert indices_of(read(path, wanted, "pyav", info)) == wanted
    assert indices_of(list(iter_frames(path, "pyav"))) == every
    # Pixel for pixel (up to YUV->RGB rounding) what OpenCV's sequential decode gives.
    ours = read(path, [59, 30, 13, 1], "pyav", info).astype(np.int16)
    theirs = read(path, [59, 30, 13, 1], backend="opencv").astype(np.int16)
    assert np.abs(ours - theirs).max() <= 3


def test_pyav_refusal_falls_back_to_opencv_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = damaged_avi(tmp_path, "zero_tail", 25)
    with pytest.raises(VideoReadError, match=r"pyav: frame 39, the last of the 40 packets, does not decode"):
        probe(path, "pyav")
    caplog.set_level(logging.WARNING, logger="tsn.io")
    info = probe(path)
    assert info == VideoInfo(HEIGHT, WIDTH, 25, 25.0, "opencv")
    wanted = [24, 4, 4, 0]
    assert indices_of(read(path, wanted)) == wanted
    assert indices_of(read(path, wanted, info=info)) == wanted
    assert indices_of(read(path, [7, 2])) == [7, 2]
    records = [record for record in caplog.records if record.name == "tsn.io"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert message.startswith(f"{path}: pyav: ") and message.endswith("reading it with opencv instead")


def test_decord_needs_increasing_timestamps_in_its_index() -> None:
    assert timestamps_usable(np.arange(5) * 0.04)
    assert timestamps_usable(np.array([0.0]))
    # What decord reports for AVIs without timestamps (AV_NOPTS_VALUE): its seeks there return wrong frames.
    assert not timestamps_usable(np.full(5, -3.0744575e17))
    assert not timestamps_usable(np.array([0.0, 0.04, 0.04, 0.08]))
    assert not timestamps_usable(np.array([0.0, 0.08, 0.04]))
    assert not timestamps_usable(np.array([0.0, np.nan]))


def damaged_avi(tmp_path: Path, how: str, good: int) -> Path:
    """A 40-frame MJPG AVI whose container still claims 40 frames, but only frames 0..good-1 decode.

    zero_tail: payloads of frames good.. zeroed (index kept, every backend claims 40);
    cut_inside: file cut 20 bytes into frame ``good``'s payload (the header claims 40, decord indexes good+1);
    cut_between: file cut right before frame ``good``'s chunk (the header claims 40, decord indexes good).
    """
    source = make_index_video(tmp_path / "source.avi", NUM_FRAMES, fourcc="MJPG")
    data = bytearray(source.read_bytes())
    chunks = movi_frame_chunks(bytes(data))
    assert len(chunks) == NUM_FRAMES
    if how == "zero_tail":
        for offset, size in chunks[good:]:
            data[offset + 8:offset + 8 + size] = bytes(size)
    elif how == "cut_inside":
        data = data[:chunks[good][0] + 8 + 20]
    else:
        data = data[:chunks[good][0]]
    path = tmp_path / f"{how}.avi"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how, auto_backend", [("zero_tail", "opencv"), ("cut_inside", "opencv"),
                                               ("cut_between", "pyav")])
def test_container_that_overstates_its_frame_count_is_corrected(tmp_path: Path, how: str,
                                                                auto_backend: str) -> None:
    good = 25
    path = damaged_avi(tmp_path, how, good)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == NUM_FRAMES  # what the container claims
    capture.release()

    assert probe(path, "opencv") == VideoInfo(HEIGHT, WIDTH, good, 25.0, "opencv")
    info = probe(path)
    assert info == VideoInfo(HEIGHT, WIDTH, good, 25.0, auto_backend)
    if auto_backend == "opencv":
        # decord and PyAV index more frames than decode: they refuse the file instead of guessing.
        claimed = len(decord.VideoReader(str(path)))
        assert claimed > good
        with pytest.raises(VideoReadError, match=f"decord: its frame numbers cannot be checked .*frame {claimed - 1}, "
                                                 f"the last of the {claimed} packets, does not decode"):
            probe(path, "decord")
        with pytest.raises(VideoReadError, match=r"pyav: frame \d+, the last of the \d+ packets, does not decode"):
            probe(path, "pyav")
    assert indices_of(read(path, [24, 0, 12, 24])) == [24, 0, 12, 24]
    assert indices_of(read(path, [24, 0], info=info)) == [24, 0]
    assert len(list(iter_frames(path))) == good
    with pytest.raises(VideoReadError, match=f"frame index {good} outside \\[0, {good}\\)"):
        read(path, [good])


def spread(num_frames: int) -> np.ndarray:
    """What a sampler might choose: (2, 3) indices, out of order, with a repeat and never the last frame."""
    return np.array([[num_frames // 2, 0, num_frames // 2], [1, num_frames - 2, num_frames // 3]])


def half_size(height: int, width: int) -> tuple[int, int]:
    return height // 2, width // 2


def first_read_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """(video, backend) pairs that take each way through ``read_first``."""
    return {
        "decord-mp4": (make_index_video(tmp_path / "v.mp4", NUM_FRAMES), "decord"),
        "pyav-mp4": (tmp_path / "v.mp4", "pyav"),
        "auto-mp4": (tmp_path / "v.mp4", "auto"),
        "decord-avi": (make_index_video(tmp_path / "v.avi", NUM_FRAMES, fourcc="MJPG"), "decord"),
        "auto-avi": (tmp_path / "v.avi", "auto"),
        "opencv-mp4": (tmp_path / "v.mp4", "opencv"),
        "auto-zero-tail": (damaged_avi(tmp_path, "zero_tail", 25), "auto"),
        "auto-cut-inside": (damaged_avi(tmp_path, "cut_inside", 25), "auto"),
        "auto-narrow": (make_index_video(tmp_path / "narrow.mp4", 30, 48, HEIGHT), "auto"),
    }


@pytest.mark.parametrize("size_for", [None, half_size], ids=["own-size", "half-size"])
def test_read_first_gives_what_probe_then_read_give(tmp_path: Path, size_for) -> None:
    for name, (path, backend) in first_read_cases(tmp_path).items():
        calls: list[int] = []

        def choose(num_frames: int) -> np.ndarray:
            calls.append(num_frames)
            return spread(num_frames)

        info, indices, frames = read_first(path, choose, backend, size_for)
        expected_info = probe(path, backend)
        expected_indices = spread(expected_info.num_frames)
        size = size_for(expected_info.height, expected_info.width) if size_for else None
        expected = read(path, expected_indices.reshape(-1), backend, expected_info, size)
        assert info == expected_info, name
        assert np.array_equal(indices, expected_indices), name
        assert frames.shape == expected.shape and np.array_equal(frames, expected), name
        if backend != "opencv":  # frames really are those indices (the comparison above is of equals)
            assert indices_of(frames) == expected_indices.reshape(-1).tolist(), name
        # A claimed count that is too high is found out by decoding the claimed last frame: choose sees
        # it, then the true count.
        assert calls[-1] == expected_info.num_frames and len(calls) <= 2, name
        if name.endswith(("tail", "inside")):
            assert len(calls) == 2 and calls[0] > 25, name


def test_read_first_on_a_sound_video_decodes_no_separate_probe(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_index_video(tmp_path / "v.mp4", NUM_FRAMES)

    def no_probe(path: str) -> VideoInfo:
        raise AssertionError("a separate probe was called")

    for backend in ("auto", "pyav"):
        monkeypatch.setattr(pyav_backend, "probe", no_probe)
        info, indices, frames = read_first(path, spread, backend)
        assert info == VideoInfo(HEIGHT, WIDTH, NUM_FRAMES, 25.0, "pyav")
        assert indices_of(frames) == spread(NUM_FRAMES).reshape(-1).tolist()
    # The decord-only read of a file decord must refuse still raises decord's probe error.
    monkeypatch.undo()
    with pytest.raises(VideoReadError, match=r"decord: its frame numbers cannot be checked .* does not decode"):
        read_first(damaged_avi(tmp_path, "zero_tail", 25), spread, "decord")


def _text_as_mp4(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    return path


def _audio_only(tmp_path: Path) -> Path:
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(np.zeros(8000, dtype=np.int16).tobytes())
    return path


def _mp4_cut_in_half(tmp_path: Path) -> Path:
    source = make_index_video(tmp_path / "whole.mp4", NUM_FRAMES)
    path = tmp_path / "half.mp4"
    path.write_bytes(source.read_bytes()[:source.stat().st_size // 2])
    return path


def _empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.mp4"
    path.touch()
    return path


def _folder(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.mkdir()
    return path


def _frames_missing(tmp_path: Path) -> Path:
    folder = write_rawframes(tmp_path / "frames", 5)
    (folder / RAWFRAME_TEMPLATE.format(3)).unlink()
    return folder


def _last_frame_broken(tmp_path: Path) -> Path:
    folder = write_rawframes(tmp_path / "frames", 5)
    (folder / RAWFRAME_TEMPLATE.format(5)).write_text("not a jpeg")
    return folder


def _last_frame_other_size(tmp_path: Path) -> Path:
    folder = write_rawframes(tmp_path / "frames", 5)
    cv2.imwrite(str(folder / RAWFRAME_TEMPLATE.format(5)), np.zeros((24, 32, 3), dtype=np.uint8))
    return folder


BAD_INPUTS: list[tuple[str, Callable[[Path], Path], str, str]] = [
    ("missing", lambda tmp_path: tmp_path / "gone.mp4", "auto", r"^no such file or folder$"),
    ("zero-byte", _empty_file, "auto", r"^empty file \(0 bytes\)$"),
    ("text-named-mp4", _text_as_mp4, "auto",
     r"^no backend can read it: (?=.*pyav: cannot open it \()(?=.*opencv: cannot open it \()"),
    ("audio-only", _audio_only, "auto",
     r"^no backend can read it: (?=.*pyav: no video stream)(?=.*opencv: cannot open it \()"),
    ("mp4-cut-in-half", _mp4_cut_in_half, "auto",
     r"^no backend can read it: (?=.*pyav: cannot open it \()(?=.*opencv: cannot open it \()"),
    ("folder-for-decord", _folder, "decord", r"^is a folder, not a video file \(backend 'decord'"),
    ("folder-for-opencv", _folder, "opencv", r"^is a folder, not a video file \(backend 'opencv'"),
    ("folder-without-frames", _folder, "auto", r"^rawframes: folder without img_00001\.jpg"),
    ("file-for-rawframes", _text_as_mp4, "rawframes", r"^is a file, not a folder of frames"),
    ("frame-missing", _frames_missing, "auto",
     r"^rawframes: img_00003\.jpg is missing \(the folder has 4 frame files\)$"),
    ("frame-broken", _last_frame_broken, "rawframes",
     r"^rawframes: img_00005\.jpg \(frame 4\) is missing or does not decode$"),
    ("frame-other-size", _last_frame_other_size, "auto",
     r"^rawframes: img_00005\.jpg is 32x24, expected 64x48 like the other frames$"),
]


@pytest.mark.parametrize("make, backend, reason", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
@pytest.mark.parametrize("call", ["probe", "read", "read_first", "iter_frames"])
def test_bad_input_raises_one_clear_error(tmp_path: Path, make: Callable[[Path], Path], backend: str, reason: str,
                                          call: str) -> None:
    path = make(tmp_path)
    with pytest.raises(VideoReadError) as caught:
        if call == "probe":
            probe(path, backend)
        elif call == "read":
            read(path, [0, 4], backend=backend)
        elif call == "read_first":
            read_first(path, lambda num_frames: np.array([0, 4]), backend)
        else:
            list(iter_frames(path, backend))
    error = caught.value
    assert error.path == str(path)
    assert str(error) == f"{path}: {error.reason}" and "\n" not in str(error)
    assert re.search(reason, error.reason), f"{error.reason!r} does not match {reason!r}"
