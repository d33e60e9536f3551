"""Bad inputs (issue 6) in skip and raise mode: ClipDataset, loader workers, check_videos, train.py and test.py.

The inputs come from ``badfiles``: a zero-byte file, an MP4 cut in half, a text file named .mp4, an
audio-only AVI, a folder where a file should be, a list line naming a missing file, a malformed list
line, a label outside the class list, frame folders with fewer frames than the list says or with a gap
in their numbering; and two that only look bad and must be read exactly: an AVI that overstates its
frame count and videos 48 and 72 pixels wide (decord fails on them, OpenCV takes over).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch._utils import ExceptionWrapper

from badfiles import (OVERSTATED_GOOD, make_audio_only_avi, make_cut_in_half, make_folder_for_file,
                      make_frame_folder, make_good_videos, make_narrow, make_overstated_avi, make_text_as_mp4,
                      make_unknown_codec, make_zero_byte, write_list)
from tsn.cli import user_error_message
from tsn.config import load_config
from tsn.data import transforms as T
from tsn.jobs.check import Problem, check_lists
from tsn.data.dataset import ClipDataset
from tsn.data.lists import ListFormatError, VideoRecord
from tsn.data.loader import build_dataloader, set_loader_epoch
from tsn.data.sampling import val_indices
from tsn.build import build_dataset
from tsn.evaluation.build import run_test
from tsn.io import VideoReadError
from tsn.training.trainer import setup_logging
from tiny_training import restored_global_state
from videos import frame_index

REPO = Path(__file__).resolve().parents[1]
IDENTITY = T.ClipTransform(())  # whole frames, so that each frame's index can be read back
GOOD = {"a.mp4": 20, "b.mp4": 23, "c.mp4": 26, "d.mp4": 29, "e.mp4": 32, "f.mp4": 35}
TWO_FAILED = r"^no backend can read it: pyav: cannot open it \(not a video, or a damaged container\); " \
             r"opencv: cannot open it \(not a video, no video stream, or a damaged container\)$"
# Unreadable list entries and the reason each must be reported with.
UNREADABLE = {
    "empty.mp4": r"^empty file \(0 bytes\)$",
    "half.mp4": TWO_FAILED,
    "notes.mp4": TWO_FAILED,
    "speech.avi": r"^no backend can read it: pyav: no video stream.*; "
                  r"opencv: cannot open it \(not a video, no video stream, or a damaged container\)$",
    "nocodec.mp4": r"^no backend can read it: pyav: the video stream has no codec FFmpeg knows \(a damaged "
                   r"header\?\); opencv: cannot open it \(not a video, no video stream, or a damaged container\)$",
    "clip.mp4": r"^rawframes: folder without img_00001\.jpg \(neither a video file nor a folder of frames\)$",
    "gone.mp4": r"^no such file or folder$",
}
# Inputs that look bad but must be read, frame-exact: entry -> frames that really decode.
READABLE = {"overstated.avi": OVERSTATED_GOOD, "narrow48.mp4": 30, "narrow72.mp4": 30}
# Frame folders: (folder, frames the list claims) -> reason.
RAWFRAMES_BAD = {
    ("frames/short", 30): r"^frame index 25 outside \[0, 20\)$",
    ("frames/gap", 20): r"^rawframes: img_00011\.jpg is missing \(the folder has 19 frame files\)$",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    make_good_videos(root, GOOD)
    make_zero_byte(root, "empty.mp4")
    make_cut_in_half(root, "half.mp4")
    make_text_as_mp4(root, "notes.mp4")
    make_audio_only_avi(root, "speech.avi")
    make_unknown_codec(root, "nocodec.mp4")
    make_folder_for_file(root, "clip.mp4")
    make_overstated_avi(root, "overstated.avi")
    make_narrow(root, 48)
    make_narrow(root, 72)
    make_frame_folder(root / "frames" / "good", 20)
    make_frame_folder(root / "frames" / "short", 20)
    make_frame_folder(root / "frames" / "gap", 20, missing=(11,))
    return root


def indices_of(clip: torch.Tensor) -> list[int]:
    """Frame indices encoded in a uint8 clip (..., T, 3, H, W), flattened."""
    frames = clip.reshape(-1, *clip.shape[-3:]).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    return [frame_index(frame) for frame in frames]


def squash(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every frame resized (not cropped) to 32x32, so that clips of any width stack and stay readable."""
    return np.stack([cv2.resize(frame, (32, 32), interpolation=cv2.INTER_AREA) for frame in frames])


def frames_of(entry: str) -> int:
    return GOOD.get(entry) or READABLE[entry]


# ---------------------------------------------------------------- ClipDataset, every input, both modes


@pytest.mark.parametrize("mode", ["skip", "raise"])
@pytest.mark.parametrize("entry", list(UNREADABLE))
def test_unreadable_video_is_replaced_or_raised(root: Path, entry: str, mode: str) -> None:
    records = [VideoRecord("a.mp4", 0), VideoRecord(entry, 1), VideoRecord("c.mp4", 2)]
    dataset = ClipDataset(records, root, "video", "auto", "val", 3, 1, IDENTITY, on_error=mode)
    if mode == "skip":
        sample = dataset[1]
        # The next readable video, with its own label and its own frames.
        assert (sample.label, sample.index) == (2, 2)
        assert indices_of(sample.clip) == val_indices(GOOD["c.mp4"], 3).tolist()
        assert len(sample.skipped) == 1 and sample.skipped[0].path == str(root / entry)
        assert re.search(UNREADABLE[entry], sample.skipped[0].reason), sample.skipped[0].reason
    else:
        with pytest.raises(VideoReadError) as caught:
            dataset[1]
        assert caught.value.path == str(root / entry)
        assert re.search(UNREADABLE[entry], caught.value.reason), caught.value.reason
        assert str(caught.value) == f"{root / entry}: {caught.value.reason}" and "\n" not in str(caught.value)
    assert dataset[2].skipped == () and dataset[2].label == 2


@pytest.mark.parametrize("mode", ["skip", "raise"])
@pytest.mark.parametrize("entry", list(READABLE))
def test_inputs_that_only_look_bad_are_read_exactly(root: Path, entry: str, mode: str) -> None:
    records = [VideoRecord("a.mp4", 0), VideoRecord(entry, 1)]
    for backend in ("auto", "opencv"):
        dataset = ClipDataset(records, root, "video", backend, "val", 4, 1, IDENTITY, on_error=mode)
        sample = dataset[1]
        assert (sample.label, sample.index, sample.skipped) == (1, 1, ())
        assert indices_of(sample.clip) == val_indices(READABLE[entry], 4).tolist()


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_training_config_backend_auto_falls_back_to_opencv(root: Path, backend: str) -> None:
    """``data.backend: auto`` (the default) reads every file: the 48/72 px wide videos by PyAV, the AVI
    that overstates its frame count by OpenCV. ``pyav`` alone skips or refuses that AVI."""
    entries = ["narrow48.mp4", "narrow72.mp4", "overstated.avi"]
    write_list(root / "narrow.txt", [f"{entry} {label}" for entry, label in zip(entries, [0, 1, 1])])
    for mode in ("skip", "raise"):
        cfg = load_config(None, [f"data.root={root}", "data.val_list=narrow.txt", f"data.backend={backend}",
                                 f"data.on_error={mode}", "data.input_size=48", "data.short_side=48",
                                 "data.num_segments=3"])
        dataset = build_dataset(cfg, "val", 2)
        dataset.transform = squash  # the centre crop would cut the index cells of the 72 px video
        for i, entry in enumerate(entries[:2]):
            sample = dataset[i]
            assert (sample.index, sample.skipped) == (i, ())
            assert indices_of(sample.clip) == val_indices(READABLE[entry], 3).tolist()
        if backend == "auto":
            sample = dataset[2]
            assert (sample.index, sample.skipped) == (2, ())
            assert indices_of(sample.clip) == val_indices(READABLE["overstated.avi"], 3).tolist()
        elif mode == "skip":
            assert dataset[2].index == 0 and dataset[2].skipped[0].path == str(root / "overstated.avi")
        else:
            with pytest.raises(VideoReadError, match=r"overstated\.avi: pyav: frame 39, the last of the 40 packets"):
                dataset[2]


@pytest.mark.parametrize("mode", ["skip", "raise"])
@pytest.mark.parametrize("folder, claimed", list(RAWFRAMES_BAD))
def test_frame_folder_with_frames_missing(root: Path, folder: str, claimed: int, mode: str) -> None:
    records = [VideoRecord("frames/good", 0, 20), VideoRecord(folder, 1, claimed), VideoRecord("frames/good", 2, 20)]
    dataset = ClipDataset(records, root, "rawframes", "auto", "val", 3, 1, IDENTITY, on_error=mode)
    reason = RAWFRAMES_BAD[(folder, claimed)]
    if mode == "skip":
        sample = dataset[1]
        assert (sample.label, sample.index) == (2, 2)
        assert indices_of(sample.clip) == val_indices(20, 3).tolist()
        assert [skip.path for skip in sample.skipped] == [str(root / folder)]
        assert re.search(reason, sample.skipped[0].reason), sample.skipped[0].reason
    else:
        with pytest.raises(VideoReadError) as caught:
            dataset[1]
        assert caught.value.path == str(root / folder) and re.search(reason, caught.value.reason)


@pytest.mark.parametrize("mode", ["skip", "raise"])
@pytest.mark.parametrize("lines, message", [
    (["a.mp4 0", "b.mp4", "c.mp4 1"], "2: expected 'PATH LABEL', got 'b.mp4' (missing label)"),
    (["a.mp4 0", "# a comment", "b.mp4 one"], "3: label 'one' is not an integer"),
    (["a.mp4 0", "b.mp4 5", "c.mp4 1"], "2: label 5 of 'b.mp4' is outside the class list (2 classes, labels 0..1)"),
])
def test_bad_list_lines_stop_before_training_in_both_modes(root: Path, lines: list[str], message: str,
                                                          mode: str) -> None:
    """A list is checked whole when the run starts: a bad line is an error naming it, skip mode or not
    (skipping it would drop a video, or give it a wrong label, without anyone noticing)."""
    list_path = write_list(root / f"lines_{mode}.txt", lines)
    cfg = load_config(None, [f"data.root={root}", f"data.train_list={list_path.name}", f"data.on_error={mode}"])
    with pytest.raises(ListFormatError) as caught:
        build_dataset(cfg, "train", 2)
    assert str(caught.value) == f"{list_path}:{message}"


# ---------------------------------------------------------------- loader workers


class LoggingSquash:
    """``squash``, logging one line per clip from the process that makes it (a loader worker)."""

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        logging.getLogger("tsn.test_worker").warning("clip made by process %d", os.getpid())
        return squash(frames, rng)


def test_loader_workers_log_to_the_main_process_console_and_train_log(root: Path, tmp_path: Path) -> None:
    """Workers start from a fork server, not as forks: the main process's logging (train.log) is given to them."""
    records = [VideoRecord(name, 0) for name in ("a.mp4", "b.mp4", "c.mp4")]
    with restored_global_state():  # undoes setup_logging's handlers on the "tsn" logger
        setup_logging(tmp_path, is_main=True)
        dataset = ClipDataset(records, root, "video", "auto", "val", 3, 1, LoggingSquash(), on_error="raise")
        loader = build_dataloader(dataset, 3, shuffle=False, num_workers=1, seed=0, drop_last=False)
        assert len(list(loader)) == 1
        del loader
    lines = [line for line in (tmp_path / "train.log").read_text().splitlines() if "clip made by process" in line]
    assert len(lines) == 3 and all(" WARNING tsn.test_worker: " in line for line in lines)
    assert not any(line.endswith(f"process {os.getpid()}") for line in lines)  # made in the worker


def test_loader_workers_skip_every_bad_input_without_shifting_a_label(root: Path) -> None:
    """Two persistent workers, two epochs over a list mixing every input: each sample carries the label
    and the frames of the video it really comes from, and every bad video is reported each time it is
    passed over."""
    entries = ["a.mp4", "empty.mp4", "half.mp4", "b.mp4", "notes.mp4", "overstated.avi", "speech.avi",
               "clip.mp4", "gone.mp4", "narrow48.mp4", "c.mp4", "narrow72.mp4", "d.mp4", "empty.mp4"]
    records = [VideoRecord(entry, label) for label, entry in enumerate(entries)]
    bad = [entry in UNREADABLE for entry in entries]
    dataset = ClipDataset(records, root, "video", "auto", "val", 3, 1, squash, on_error="skip")
    loader = build_dataloader(dataset, 3, shuffle=False, num_workers=2, seed=0, drop_last=False)
    # Request i gets the first readable video at or after i (wrapping), having passed over the bad ones.
    expected_index, expected_skipped = [], []
    for i in range(len(entries)):
        j = i
        while bad[j]:
            expected_skipped.append(str(root / entries[j]))
            j = (j + 1) % len(entries)
        expected_index.append(j)
    for epoch in range(2):
        set_loader_epoch(loader, epoch)
        indices, skipped = [], []
        for batch in loader:
            for clip, label, index in zip(batch.clips, batch.labels.tolist(), batch.indices.tolist()):
                assert label == records[index].label
                assert indices_of(clip) == val_indices(frames_of(entries[index]), 3).tolist()
                indices.append(index)
            skipped.extend(batch.skipped)
        assert indices == expected_index
        assert [skip.path for skip in skipped] == expected_skipped
        for skip in skipped:
            assert re.search(UNREADABLE[Path(skip.path).name], skip.reason), skip


def test_worker_error_is_one_line_for_the_cli() -> None:
    """torch re-raises a worker's VideoReadError as a RuntimeError holding the worker's traceback."""
    def fail() -> None:
        raise VideoReadError("/data/x.mp4", "empty file (0 bytes)")

    def rethrown(function) -> BaseException:
        try:
            function()
        except Exception:
            wrapper = ExceptionWrapper(where="in DataLoader worker process 1")
        try:
            wrapper.reraise()
        except Exception as error:
            return error
        raise AssertionError("reraise did not raise")

    error = rethrown(fail)
    assert type(error) is RuntimeError and "Traceback" in str(error)
    assert user_error_message(error) == "/data/x.mp4: empty file (0 bytes)"
    assert user_error_message(rethrown(lambda: int("x"))) is None  # a bug keeps its traceback
    assert user_error_message(VideoReadError("/a.mp4", "why")) == "/a.mp4: why"
    assert user_error_message(ValueError("not a user error")) is None


# ---------------------------------------------------------------- check_videos


def video_check_list(root: Path) -> tuple[Path, list[tuple[int, str, str]]]:
    """A video list with every bad entry between good ones, and the (line, path, reason pattern) expected."""
    lines = ["a.mp4 0", "empty.mp4 1", "half.mp4 0", "# a comment", "notes.mp4 1", "overstated.avi 0",
             "speech.avi 1", "clip.mp4 0", "gone.mp4 1", "b.mp4", "narrow48.mp4 1", "c.mp4 2", "narrow72.mp4 0",
             "d.mp4 1", "nocodec.mp4 0"]
    expected = [(2, "empty.mp4", UNREADABLE["empty.mp4"]), (3, "half.mp4", UNREADABLE["half.mp4"]),
                (5, "notes.mp4", UNREADABLE["notes.mp4"]), (7, "speech.avi", UNREADABLE["speech.avi"]),
                (8, "clip.mp4", UNREADABLE["clip.mp4"]), (9, "gone.mp4", UNREADABLE["gone.mp4"]),
                (10, "", r"^expected 'PATH LABEL', got 'b\.mp4' \(missing label\)$"),
                (12, "c.mp4", r"^label 2 is outside the class list \(2 classes, labels 0\.\.1\)$"),
                (15, "nocodec.mp4", UNREADABLE["nocodec.mp4"])]
    return write_list(root / "check.txt", lines), expected


def assert_problems(problems: list[Problem] | tuple[Problem, ...], list_path: Path,
                    expected: list[tuple[int, str, str]]) -> None:
    assert [(p.list_path, p.line, p.path) for p in problems] == [(str(list_path), l, e) for l, e, _ in expected]
    for problem, (_, _, reason) in zip(problems, expected):
        assert re.search(reason, problem.reason), problem


def test_check_reports_every_bad_entry_with_its_line(root: Path) -> None:
    list_path, expected = video_check_list(root)
    report = check_lists(root, [list_path], "video", num_classes=2, workers=0, progress=False)
    assert report.entries == 13  # every line but the comment and the malformed one
    assert_problems(report.problems, list_path, expected)
    frames = write_list(root / "frames.txt", ["frames/good 20 0", "frames/short 30 1", "frames/gap 20 0",
                                              "frames/good 21 1", "frames/good 19 1", "frames/good 20"])
    report = check_lists(root, [frames], "rawframes", num_classes=2, workers=0, progress=False)
    assert_problems(report.problems, frames, [
        (2, "frames/short", r"^the list says 30 frames, the folder has 20$"),
        (3, "frames/gap", RAWFRAMES_BAD[("frames/gap", 20)]),
        (4, "frames/good", r"^the list says 21 frames, the folder has 20$"),
        (5, "frames/good", r"^the list says 19 frames, the folder has 20$"),
        (6, "", r"^expected 'PATH NUM_FRAMES LABEL', got 'frames/good 20' \(2 fields\)$"),
    ])
    good = write_list(root / "good.txt", [f"{name} 0" for name in GOOD] + [f"{name} 1" for name in READABLE])
    assert check_lists(root, [good], "video", num_classes=2, workers=0, progress=False).problems == ()


def test_check_videos_tool_with_workers(root: Path, tmp_path: Path) -> None:
    list_path, expected = video_check_list(root)
    classes = write_list(root / "classes.txt", ["run", "jump"])
    out = tmp_path / "bad.csv"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "check_videos.py"), "--src", str(root),
                             "--list", str(list_path), "--classes", str(classes), "--out-file", str(out),
                             "--workers", "2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == f"13 entries checked, 9 bad line(s) -> {out}"
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    problems = [Problem(row["list_path"], int(row["line"]), row["path"], row["reason"]) for row in rows]
    assert_problems(problems, list_path, expected)
    assert lines[:-1] == [str(problem) for problem in problems]


# ---------------------------------------------------------------- tools/train.py and tools/test.py


def expected_skips(entries: list[str], bad: set[str], order: list[int], used: int) -> list[str]:
    """Paths passed over, in order, for the first ``used`` requests of ``order``."""
    passed = []
    for i in order[:used]:
        j = i
        while entries[j] in bad:
            passed.append(entries[j])
            j = (j + 1) % len(entries)
    return passed


TRAIN_ENTRIES = ["a.mp4", "empty.mp4", "b.mp4", "half.mp4", "narrow48.mp4", "c.mp4", "notes.mp4", "d.mp4",
                 "speech.avi", "overstated.avi", "e.mp4", "clip.mp4", "gone.mp4", "f.mp4"]
VAL_ENTRIES = ["a.mp4", "gone.mp4", "narrow72.mp4", "empty.mp4"]
BATCH = 2


def run_tool(script: str, *args: str | Path) -> subprocess.CompletedProcess:
    """``tools/<script> args`` in a subprocess; one OpenMP thread (two cores, loader workers beside it)."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "tools" / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def trained(root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """(config, work dir, result) of a 2-epoch skip-mode run over lists holding every bad video."""
    write_list(root / "train.txt", [f"{entry} {i % 2}" for i, entry in enumerate(TRAIN_ENTRIES)])
    write_list(root / "val.txt", [f"{entry} {i % 2}" for i, entry in enumerate(VAL_ENTRIES)])
    write_list(root / "classes.txt", ["run", "jump"])
    config = root / "tiny.yaml"
    config.write_text(f"data: {{root: {root}, num_segments: 2, input_size: 32, short_side: 32, batch_size: {BATCH}, "
                      f"num_workers: 2, on_error: skip}}\nmodel: {{backbone: resnet18, pretrained: false}}\n"
                      f"train: {{epochs: 2, deterministic: true}}\ntest: {{num_clips: 1, crops: 1}}\n")
    work = tmp_path_factory.mktemp("work")
    return config, work, run_tool("train.py", "--config", config, "--work-dir", work, "--device", "cpu",
                                  "--no-progress")


def test_training_skips_reports_and_counts_every_bad_video(root: Path, trained) -> None:
    _, work, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    bad = set(UNREADABLE)
    expected = []
    for epoch in range(2):
        order = torch.randperm(len(TRAIN_ENTRIES), generator=torch.Generator().manual_seed(epoch)).tolist()
        expected += [("train", entry) for entry in
                     expected_skips(TRAIN_ENTRIES, bad, order, len(TRAIN_ENTRIES) // BATCH * BATCH)]
        expected += [("val", entry) for entry in
                     expected_skips(VAL_ENTRIES, bad, list(range(len(VAL_ENTRIES))), len(VAL_ENTRIES))]
    with open(work / "skipped.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # One row per (file, first split it was met in); every bad file of either list is there.
    first_seen = list(dict.fromkeys(entry for _, entry in expected))
    assert [Path(row["path"]).name for row in rows] == first_seen
    assert {Path(row["path"]).name for row in rows} == bad & set(TRAIN_ENTRIES + VAL_ENTRIES)
    log = (work / "train.log").read_text()
    for row in rows:
        name = Path(row["path"]).name
        assert row["path"] == str(root / name)
        assert row["split"] == next(split for split, entry in expected if entry == name)
        assert re.search(UNREADABLE[name], row["reason"]), row
        assert f"skipped {row['path']} ({row['split']} split): {row['reason']}" in log
    assert f"{len(expected)} unreadable sample(s) were replaced; see {work / 'skipped.csv'}" in log
    assert "narrow48" not in (work / "skipped.csv").read_text()


def test_training_raise_mode_stops_with_one_line_from_a_worker(root: Path, trained, tmp_path: Path) -> None:
    config, _, _ = trained
    write_list(root / "train_one_bad.txt", ["a.mp4 0", "b.mp4 1", "speech.avi 0", "c.mp4 1"])
    result = run_tool("train.py", "--config", config, "--work-dir", tmp_path / "w", "--device", "cpu",
                      "--no-progress", "--opt", "data.on_error=raise", "--opt", "data.train_list=train_one_bad.txt")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    prefix = f"error: {root / 'speech.avi'}: "
    assert line.startswith(prefix) and re.search(UNREADABLE["speech.avi"], line[len(prefix):]), line


def test_testing_skip_and_raise(root: Path, trained, tmp_path: Path) -> None:
    """tools/test.py's engine in this process: NaN score rows and skipped.csv in skip mode; in raise mode the
    error from a loader worker, as the one line tools/test.py prints."""
    config, work, result = trained
    assert result.returncode == 0
    entries = ["a.mp4", "half.mp4", "b.mp4", "clip.mp4", "narrow72.mp4"]
    test_list = write_list(root / "test_bad.txt", [f"{entry} {i % 2}" for i, entry in enumerate(entries)])
    cfg = load_config(work / "config.yaml")
    out = tmp_path / "skip"
    report = run_test(cfg, work / "best.pth", out, list_file=test_list, device="cpu", progress=False)
    assert report.num_videos == 3
    scores = np.load(out / "scores.npy")
    assert np.isnan(scores).all(axis=1).tolist() == [entry in UNREADABLE for entry in entries]
    with open(out / "skipped.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # in list order, with their rows of scores.npy
    assert [(row["index"], Path(row["path"]).name) for row in rows] == [("1", "half.mp4"), ("3", "clip.mp4")]
    for row in rows:
        assert re.search(UNREADABLE[Path(row["path"]).name], row["reason"]), row

    cfg = load_config(work / "config.yaml", ["data.on_error=raise"])
    with pytest.raises(RuntimeError) as caught:  # VideoReadError, re-raised by torch from worker 0
        run_test(cfg, work / "best.pth", tmp_path / "raise", list_file=test_list, device="cpu", progress=False)
    line = user_error_message(caught.value)
    assert re.fullmatch(f"{re.escape(str(root / 'half.mp4'))}: {UNREADABLE['half.mp4'][1:]}", line), line


def test_check_videos_checks_flow_folders_as_training_reads_them(tmp_path: Path) -> None:
    """A flow list (tools/extract_flow.py): counts against the folders' complete x_/y_ pairs, and the stacks read."""
    def flow_folder(name: str, pairs: int, drop: str | None = None) -> None:
        folder = tmp_path / name
        folder.mkdir()
        for i in range(1, pairs + 1):
            for axis in "xy":
                if f"{axis}_{i:05d}.jpg" != drop:
                    cv2.imwrite(str(folder / f"{axis}_{i:05d}.jpg"), np.full((16, 16), 128, np.uint8))

    flow_folder("good", 12)
    flow_folder("short", 8)  # the list says 12
    flow_folder("torn", 12, drop="y_00005.jpg")  # a pair without its y file
    listed = write_list(tmp_path / "train_flow.txt", ["good 12 0", "short 12 1", "torn 12 0"])
    report = check_lists(tmp_path, [listed], "flow", num_segments=2, new_length=5, progress=False)
    assert report.entries == 3
    assert [(p.line, p.path) for p in report.problems] == [(2, "short"), (3, "torn")]
    assert report.problems[0].reason == "the list says 12 flow pairs, the folder has 8"
    assert "y_00005.jpg is missing" in report.problems[1].reason
    # the tool: --list-format flow, exit 1 on the bad entries
    done = subprocess.run([sys.executable, str(REPO / "tools" / "check_videos.py"), "--src", str(tmp_path), "--list",
                           str(listed), "--list-format", "flow", "--num-segments", "2", "--workers", "0", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stdout.splitlines()[-1] == "3 entries checked, 2 bad line(s)"
