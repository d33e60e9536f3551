"""tools/extract_frames.py and tsn.jobs.extract: layout, frame-exact contents, labels, failures, resume, SIGKILL."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tsn.io import VideoReadError
from tsn.jobs.extract import (ExtractJob, completed_frames, extract_frames, find_videos, resize_short_side,
                            write_frames)
from tiny_training import load_tool
from videos import frame_index, index_frame, make_index_video

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "extract_frames.py"


tool = load_tool("extract_frames")


def run_tool(*args: str | Path) -> int:
    """The tool's exit status for these arguments."""
    return tool.main([str(a) for a in args])


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included) -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def frame_indices(folder: Path) -> list[int]:
    """Decode the index of every img_*.jpg in folder, in file-name order; checks names are 1..N without gaps."""
    names = sorted(p.name for p in folder.glob("img_*.jpg"))
    assert names == [f"img_{i:05d}.jpg" for i in range(1, len(names) + 1)]
    return [frame_index(cv2.cvtColor(cv2.imread(str(folder / n)), cv2.COLOR_BGR2RGB)) for n in names]


def hidden_work_dirs(root: Path) -> list[str]:
    """Names of the hidden folders under root (what a killed run leaves)."""
    return sorted(p.name for p in root.rglob(".*") if p.is_dir())


# ---------------------------------------------------------------- pure helpers

@pytest.mark.parametrize("shape, short_side, expected", [
    ((48, 64), 24, (24, 32)),
    ((64, 48), 24, (32, 24)),
    ((48, 64), 96, (96, 128)),
    ((45, 100), 32, (32, 71)),     # 71.1 -> 71
    ((4, 6), 3, (3, 5)),           # 4.5 rounds half up -> 5
    ((48, 64), 48, (48, 64)),      # already the size
    ((48, 64), 0, (48, 64)),       # 0 keeps the size
])
def test_resize_short_side(shape, short_side, expected):
    frame = np.zeros((*shape, 3), dtype=np.uint8)
    assert resize_short_side(frame, short_side).shape == (*expected, 3)


def test_find_videos_folder_per_class(tmp_path):
    for name in ["walk/b.mp4", "walk/a.AVI", "run/x/deep.mkv", "run/notes.txt", ".cache/h.mp4", "run/.hidden.mp4",
                 "jump/readme.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    jobs, classes = find_videos(tmp_path)
    assert classes == ["run", "walk"]  # jump holds no video
    assert jobs == [ExtractJob("run/x/deep.mkv", 0), ExtractJob("walk/a.AVI", 1), ExtractJob("walk/b.mp4", 1)]
    (tmp_path / "flat.mp4").write_bytes(b"")
    jobs, classes = find_videos(tmp_path)
    assert classes == []
    assert [j.label for j in jobs] == [0, 0, 0, 0]
    assert jobs[0].video == "flat.mp4"


# ---------------------------------------------------------------- the tool, end to end

def test_folder_layout_frames_list_and_classes(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_index_video(src / "b_class" / "v1.mp4", 24)
    make_index_video(src / "a_class" / "sub" / "v2.avi", 30, fourcc="MJPG")
    assert run_tool("--src", src, "--out", out, "--short-side", "0", "--workers", "1") == 0

    assert (out / "rawframes.txt").read_text() == "a_class/sub/v2 30 0\nb_class/v1 24 1\n"
    assert (out / "classes.txt").read_text() == "a_class\nb_class\n"
    assert (out / "extract_errors.csv").read_text() == "path,reason\n"
    assert frame_indices(out / "b_class" / "v1") == list(range(24))
    assert frame_indices(out / "a_class" / "sub" / "v2") == list(range(30))
    assert cv2.imread(str(out / "b_class" / "v1" / "img_00001.jpg")).shape == (48, 64, 3)
    assert sorted(p.name for p in (out / "b_class" / "v1").iterdir())[0] == ".done"
    assert hidden_work_dirs(out) == []


def test_short_side_resizes_every_frame(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_index_video(src / "wide.mp4", 20)
    make_index_video(src / "tall.mp4", 20, width=48, height=64)
    assert run_tool("--src", src, "--out", out, "--short-side", "96", "--workers", "1") == 0
    assert (out / "rawframes.txt").read_text() == "tall 20 0\nwide 20 0\n"
    assert not (out / "classes.txt").exists()  # flat folder: no classes
    for name, shape in [("wide", (96, 128, 3)), ("tall", (128, 96, 3))]:
        assert {cv2.imread(str(p)).shape for p in (out / name).glob("img_*.jpg")} == {shape}
        assert frame_indices(out / name) == list(range(20))


def test_list_keeps_order_and_labels_and_reports_bad_videos(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_index_video(src / "z" / "c.mp4", 20)
    make_index_video(src / "a" / "b.avi", 25)
    make_index_video(src / "a" / "b.mp4", 21)  # same frame folder a/b as a/b.avi
    (src / "a" / "bad.mp4").write_text("this is not a video\n")
    listing = tmp_path / "train.txt"
    listing.write_text("# comment\nz/c.mp4 7\na/bad.mp4 3\n\na/b.avi 2\nmissing.mp4 1\na/b.mp4 5\nz/c.mp4 7\n")

    assert run_tool("--src", src, "--out", out, "--list", listing, "--short-side", "0", "--workers", "1") == 0
    assert (out / "train_rawframes.txt").read_text() == "z/c 20 7\na/b 25 2\nz/c 20 7\n"
    rows = list(csv.reader((out / "train_extract_errors.csv").open()))
    assert [r[0] for r in rows] == ["path", "a/bad.mp4", "missing.mp4", "a/b.mp4"]
    reasons = dict(rows[1:])
    assert reasons["a/bad.mp4"]  # whatever the readers said, but something
    assert reasons["missing.mp4"] == "file not found"
    assert reasons["a/b.mp4"] == "frame folder a/b is already the target of a/b.avi"
    err = capsys.readouterr().err
    assert f"failed: a/bad.mp4: {reasons['a/bad.mp4']}" in err
    assert "failed: missing.mp4: file not found" in err
    assert not (out / "a" / "bad").exists() and not (out / "missing").exists()
    assert frame_indices(out / "a" / "b") == list(range(25))
    assert hidden_work_dirs(out) == []

    # --strict: same outputs, exit 1; the finished videos are not redone
    before = tree(out)
    assert run_tool("--src", src, "--out", out, "--list", listing, "--short-side", "0", "--workers", "1",
                    "--strict") == 1
    assert tree(out) == before


def test_paths_that_would_escape_or_overwrite_are_refused(tmp_path):
    src = tmp_path / "src"
    make_index_video(src / "a" / "clip.mp4", 20)
    (src / "a" / "noext").write_bytes((src / "a" / "clip.mp4").read_bytes())
    original = (src / "a" / "noext").read_bytes()
    jobs = [ExtractJob("a/noext", 0), ExtractJob("../src/a/clip.mp4", 1), ExtractJob("a/clip.mp4", 2)]
    summary = extract_frames(src, src, jobs, short_side=0, workers=1, progress=False)  # in place
    assert [(f.path, f.reason) for f in summary.failed] == [
        ("a/noext", "its frame folder would replace the video itself (no file extension and --out is --src)"),
        ("../src/a/clip.mp4", "path must be relative to the source root, without '..'"),
    ]
    assert [(v.frame_dir, v.num_frames, v.label) for v in summary.extracted] == [("a/clip", 20, 2)]
    assert (src / "a" / "noext").read_bytes() == original


def test_bad_list_and_bad_flags_exit_2(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    listing = tmp_path / "val.txt"
    listing.write_text("a.mp4 1\nb.mp4\n")
    assert run_tool("--src", src, "--out", tmp_path / "out", "--list", listing) == 2
    assert capsys.readouterr().err == f"error: {listing}:2: expected 'PATH LABEL', got 'b.mp4' (missing label)\n"
    assert run_tool("--src", tmp_path / "nope", "--out", tmp_path / "out") == 2
    assert capsys.readouterr().err == f"error: --src {tmp_path / 'nope'}: not a folder\n"
    with pytest.raises(SystemExit) as exit_info:
        run_tool("--src", src, "--out", tmp_path / "out", "--quality", "101")
    assert exit_info.value.code == 2


# ---------------------------------------------------------------- crash safety and resume

def test_failure_half_way_leaves_no_folder(tmp_path):
    def frames_then_error():
        for i in range(3):
            yield index_frame(i)
        raise VideoReadError("v.mp4", "truncated stream")

    with pytest.raises(VideoReadError):
        write_frames(frames_then_error(), tmp_path / "out" / "v", 0, 95, "v.mp4", 123)
    assert list((tmp_path / "out").iterdir()) == []

    # A finished folder stays as it was when its redo fails.
    assert write_frames((index_frame(i) for i in range(4)), tmp_path / "out" / "v", 0, 95, "v.mp4", 123) == 4
    before = tree(tmp_path / "out")
    with pytest.raises(VideoReadError):
        write_frames(frames_then_error(), tmp_path / "out" / "v", 0, 80, "v.mp4", 123)
    assert tree(tmp_path / "out") == before
    assert completed_frames(tmp_path / "out" / "v", 0, 95, 123) == 4
    assert completed_frames(tmp_path / "out" / "v", 0, 80, 123) is None    # other quality
    assert completed_frames(tmp_path / "out" / "v", 256, 95, 123) is None  # other size
    assert completed_frames(tmp_path / "out" / "v", 0, 95, 124) is None    # source changed


def _make_videos(src: Path, count: int, num_frames: int) -> list[ExtractJob]:
    """Videos c<i%2>/v<i>.mp4 of num_frames + i frames, labelled i % 2."""
    jobs = []
    for i in range(count):
        make_index_video(src / f"c{i % 2}" / f"v{i:02d}.mp4", num_frames + i)
        jobs.append(ExtractJob(f"c{i % 2}/v{i:02d}.mp4", i % 2))
    return jobs


def test_resume_after_simulated_interrupt_equals_clean_run(tmp_path):
    src, clean, out = tmp_path / "src", tmp_path / "clean", tmp_path / "out"
    jobs = _make_videos(src, 6, 20)
    summary = extract_frames(src, clean, jobs, short_side=32, workers=1, progress=False)
    assert (summary.done, summary.skipped_existing, summary.failed) == (6, 0, [])
    assert [(v.frame_dir, v.num_frames, v.label) for v in summary.extracted] == [
        (f"c{i % 2}/v{i:02d}", 20 + i, i % 2) for i in range(6)]

    extract_frames(src, out, jobs, short_side=32, workers=1, progress=False)
    # What a killed run can leave, plus damage a rerun must notice:
    (out / "c0" / "v00" / ".done").unlink()                     # finished but unmarked
    (out / "c1" / "v01" / "img_00007.jpg").unlink()             # a frame gone
    (out / "c0" / "v02" / "img_00003.jpg").write_bytes(b"junk")  # not detected (no decoding): must stay skipped
    stale = out / "c0" / ".v04.partial-99999"
    stale.mkdir()
    (stale / "img_00001.jpg").write_bytes(b"half")
    (out / "c1" / ".v05.stale-4242").mkdir()
    (out / "c1" / "v03" / ".done").write_text('{"num_frames": 23, "quality": 80, "short_side": 32, '
                                               f'"source_size": {(src / "c1" / "v03.mp4").stat().st_size}}}\n')

    summary = extract_frames(src, out, jobs, short_side=32, workers=1, progress=False)
    assert (summary.done, summary.skipped_existing, summary.failed) == (3, 3, [])
    (out / "c0" / "v02" / "img_00003.jpg").write_bytes((clean / "c0" / "v02" / "img_00003.jpg").read_bytes())
    assert tree(out) == tree(clean)
    assert hidden_work_dirs(out) == []


def test_rerun_skips_without_decoding_and_redoes_on_new_settings(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    jobs = _make_videos(src, 2, 20)
    extract_frames(src, out, jobs, short_side=0, workers=1, progress=False)
    # Same size, unreadable content: a rerun that decoded anything would fail.
    for job in jobs:
        size = (src / job.video).stat().st_size
        (src / job.video).write_bytes(b"\0" * size)
    summary = extract_frames(src, out, jobs, short_side=0, workers=1, progress=False)
    assert (summary.done, summary.skipped_existing, summary.failed) == (0, 2, [])
    assert [v.num_frames for v in summary.extracted] == [20, 21]
    # New settings: the videos are redone, fail now, and their old folders stay out of the result.
    summary = extract_frames(src, out, jobs, short_side=0, quality=80, workers=1, progress=False)
    assert (summary.done, summary.skipped_existing, len(summary.failed), summary.extracted) == (0, 0, 2, [])


def test_two_workers_give_the_same_bytes(tmp_path):
    src = tmp_path / "src"
    jobs = _make_videos(src, 4, 20)
    one = extract_frames(src, tmp_path / "one", jobs, short_side=32, workers=1, progress=False)
    two = extract_frames(src, tmp_path / "two", jobs, short_side=32, workers=2, progress=False)
    assert two.extracted == one.extracted
    assert tree(tmp_path / "two") == tree(tmp_path / "one")


def test_sigkill_mid_run_then_rerun_equals_clean_run(tmp_path):
    src, clean, out = tmp_path / "src", tmp_path / "clean", tmp_path / "out"
    count = 24  # the run takes ~1 s after its first video: ample time to kill it mid-way
    _make_videos(src, count, 40)
    args = ["--src", src, "--out", out, "--short-side", "32", "--workers", "1"]
    process = subprocess.Popen([sys.executable, str(TOOL), *map(str, args)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill once one video is finished and the next one is being written.
        deadline = time.monotonic() + 60
        while not (list(out.glob("c*/v*/.done")) and list(out.glob("c*/.*.partial-*"))):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no finished video within 60 s"
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "rawframes.txt").exists()
    finished = {p.parent.relative_to(out).as_posix() for p in out.glob("c*/v*/.done")}
    assert 1 <= len(finished) < count
    # Every non-hidden folder a list or loader could see is complete.
    assert {p.relative_to(out).as_posix() for p in out.glob("c*/v*")} == finished

    assert run_tool(*args) == 0
    assert run_tool("--src", src, "--out", clean, "--short-side", "32", "--workers", "1") == 0
    assert tree(out) == tree(clean)
    assert hidden_work_dirs(out) == []
    lines = (out / "rawframes.txt").read_text().splitlines()
    assert lines == [f"c{i % 2}/v{i:02d} {40 + i} {i % 2}" for i in sorted(range(count), key=lambda i: (i % 2, i))]
