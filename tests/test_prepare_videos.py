"""tools/prepare_videos.py and tsn.jobs.prepare: every frame kept in order, keyframe interval, size and rate,
resume, crash safety (SIGKILL), failures and the rewritten list."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import tsn.jobs.prepare as prepare
from tsn.io import probe, read
from tsn.jobs.extract import ExtractJob
from tsn.jobs.prepare import PrepareSettings, completed_copy, marker_path, prepare_video, prepare_videos
from tiny_training import load_tool
from videos import frame_index, index_frame, make_bframe_index_video, make_index_video

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "prepare_videos.py"


tool = load_tool("prepare_videos")


def run_tool(*args: str | Path) -> int:
    """The tool's exit status for these arguments (one worker, no progress bar)."""
    return tool.main(["--workers", "1", "--no-progress"] + [str(a) for a in args])


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included) -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def contents(root: Path) -> dict[str, object]:
    """What a run under root made, as a user sees it: for each copy its frames (the index each encodes), its
    keyframes and size; for each marker its record, the copy's byte count checked and left out; other files'
    bytes. libx264 does not give the same bytes in every process (about one run in 16 here differs in a few
    bytes of one copy), so copies from different runs are compared by what they decode to."""
    made: dict[str, object] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if path.suffix == ".mp4":
            info = probe(path, "pyav")
            frames = read(path, np.arange(info.num_frames), "pyav", info)
            made[name] = ([frame_index(f) for f in frames], keyframes(path), (info.height, info.width))
        elif path.name.endswith(".mp4.done"):
            record = json.loads(path.read_text())
            copy = path.with_name(path.name[1:-len(".done")])
            assert record.pop("output_size") == copy.stat().st_size, name
            made[name] = record
        else:
            made[name] = path.read_bytes()
    return made


def work_files(root: Path) -> list[str]:
    """The hidden work files under root (what a killed run leaves)."""
    return sorted(p.name for p in root.rglob(".*") if prepare.is_work_file(p.name))


def keyframes(path: Path) -> list[int]:
    """Display-order numbers of the frames whose packets are keyframes."""
    with av.open(str(path)) as container:
        packets = [(p.pts, p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]
    return [i for i, (_, key) in enumerate(sorted(packets)) if key]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An H.264 video of 40 frames, 96x64, 25 fps, B-frames, a keyframe every 30; frame i encodes i."""
    return make_bframe_index_video(tmp_path_factory.mktemp("src") / "c" / "v.mp4", 40, gop=30, width=96, height=64)


# ---------------------------------------------------------------- the copy's frames

@pytest.mark.parametrize("codec, bframes", [("h264", 3), ("h264", 0), ("hevc", 3)])
def test_copy_has_every_frame_in_order(tmp_path, source, codec, bframes):
    settings = PrepareSettings(short_side=48, keyframe_interval=8, codec=codec, bframes=bframes)
    summary = prepare_videos(source.parents[1], tmp_path, [ExtractJob("c/v.mp4", 3)], settings, progress=False)
    assert (summary.done, summary.failed) == (1, [])
    assert [(v.video, v.num_frames, v.label) for v in summary.prepared] == [("c/v.mp4", 40, 3)]
    copy = tmp_path / "c" / "v.mp4"
    info = probe(copy, "pyav")
    assert (info.num_frames, info.height, info.width) == (40, 48, 72)
    assert [frame_index(f) for f in read(copy, np.arange(40), "pyav", info)] == list(range(40))
    # The same numbering whichever reader: OpenCV decodes it sequentially.
    assert [frame_index(f) for f in read(copy, [39, 0, 17], "opencv")] == [39, 0, 17]
    with av.open(str(copy)) as container:
        assert len(container.streams) == 1 and container.streams.video[0].codec_context.name == codec


@pytest.mark.parametrize("codec, interval, expected", [
    ("h264", 8, [0, 8, 16, 24, 32]),
    ("h264", 16, [0, 16, 32]),
    ("hevc", 8, [0, 8, 16, 24, 32]),
    ("h264", 1, list(range(40))),  # all intra
])
def test_keyframes_come_exactly_every_interval(tmp_path, source, codec, interval, expected):
    target = tmp_path / "v.mp4"
    assert prepare_video(str(source), target, PrepareSettings(short_side=0, keyframe_interval=interval,
                                                              codec=codec)) == 40
    assert keyframes(target) == expected
    assert keyframes(source) == [0, 30]


@pytest.mark.parametrize("short_side, size", [
    (45, (44, 60)),   # 45 x 60: the odd row is cropped (4:2:0 needs even sides)
    (0, (48, 64)),    # the source's size
    (96, (96, 128)),  # enlarged
])
def test_short_side_even_size_and_frame_rate(tmp_path, short_side, size):
    src = make_index_video(tmp_path / "ntsc.mp4", 30, fps=29.97)  # OpenCV's mp4v: 2997/100 fps
    target = tmp_path / "out" / "ntsc.mp4"
    assert prepare_video(str(src), target, PrepareSettings(short_side=short_side, keyframe_interval=4)) == 30
    with av.open(str(src)) as container:
        rate = container.streams.video[0].average_rate
    assert rate == Fraction(2997, 100)
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.height, stream.codec_context.width) == size
        assert stream.average_rate == rate
        stamps = sorted(p.pts for p in container.demux(stream) if p.size)
        # constant frame rate: frame i at i / rate seconds
        assert [Fraction(t) * stream.time_base for t in stamps] == [i / rate for i in range(30)]
    assert [frame_index(f) for f in read(target, np.arange(30), "pyav")] == list(range(30))


def test_rate_of_a_25_fps_source_is_kept(tmp_path, source):
    prepare_video(str(source), tmp_path / "v.mp4", PrepareSettings(short_side=0))
    with av.open(str(tmp_path / "v.mp4")) as container:
        assert container.streams.video[0].average_rate == 25
    assert probe(tmp_path / "v.mp4", "pyav").fps == 25.0


def test_variable_rate_source_keeps_its_duration(tmp_path):
    """Frames 40 ms apart, then 120 ms apart: the nominal rate (25) would shorten the clip, the average keeps it."""
    src = tmp_path / "vfr.mp4"
    with av.open(str(src), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"x264-params": "bframes=0:log-level=error"}
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
            frame.pts, frame.time_base = 40 * min(i, 15) + 120 * max(i - 15, 0), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        assert (stream.guessed_rate, stream.average_rate) == (25, Fraction(375, 29))  # 30 frames in 2.32 s
    assert prepare_video(str(src), tmp_path / "copy.mp4", PrepareSettings(short_side=0)) == 30
    with av.open(str(tmp_path / "copy.mp4")) as container:
        assert container.streams.video[0].average_rate == Fraction(375, 29)
    assert [frame_index(f) for f in read(tmp_path / "copy.mp4", np.arange(30), "pyav")] == list(range(30))


def test_rate_from_the_reader_when_pyav_gives_none(tmp_path, monkeypatch):
    src = make_index_video(tmp_path / "ntsc.mp4", 10, fps=29.97)
    monkeypatch.setattr(prepare, "source_rate", lambda path: None)
    prepare_video(str(src), tmp_path / "copy.mp4", PrepareSettings(short_side=0))
    with av.open(str(tmp_path / "copy.mp4")) as container:
        assert container.streams.video[0].average_rate == Fraction(2997, 100)


def test_a_copy_whose_frame_count_differs_is_a_failure(tmp_path, source, monkeypatch):
    encode = prepare.encode_video
    monkeypatch.setattr(prepare, "encode_video", lambda *args, **kwargs: encode(*args, **kwargs) + 1)
    summary = prepare_videos(source.parents[1], tmp_path, [ExtractJob("c/v.mp4", 0)], progress=False)
    assert [(f.path, f.reason) for f in summary.failed] == [("c/v.mp4", "the copy has 40 frames, 41 were decoded")]
    assert summary.prepared == [] and list(tmp_path.rglob("*")) == [tmp_path / "c"]


# ---------------------------------------------------------------- resume and crash safety

def _make_videos(src: Path, count: int, num_frames: int) -> list[ExtractJob]:
    """Videos c<i%2>/v<i>.mp4 of num_frames + i frames, labelled i % 2."""
    jobs = []
    for i in range(count):
        make_index_video(src / f"c{i % 2}" / f"v{i:02d}.mp4", num_frames + i)
        jobs.append(ExtractJob(f"c{i % 2}/v{i:02d}.mp4", i % 2))
    return jobs


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every source the preparation starts to decode (in this process)."""
    calls: list[str] = []
    original = prepare.iter_frames

    def counting(path, backend="auto"):
        calls.append(Path(path).name)
        return original(path, backend)

    monkeypatch.setattr(prepare, "iter_frames", counting)
    return calls


def test_rerun_skips_without_decoding_and_redoes_on_new_settings(tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "out"
    jobs = _make_videos(src, 2, 20)
    settings = PrepareSettings(short_side=32, keyframe_interval=8)
    calls = _count_decodes(monkeypatch)
    assert prepare_videos(src, out, jobs, settings, progress=False).done == 2
    assert calls == ["v00.mp4", "v01.mp4"]
    first = tree(out)
    calls.clear()
    summary = prepare_videos(src, out, jobs, settings, progress=False)
    assert (summary.done, summary.skipped_existing, summary.failed, calls) == (0, 2, [], [])
    assert [(v.video, v.num_frames, v.label) for v in summary.prepared] == [("c0/v00.mp4", 20, 0),
                                                                            ("c1/v01.mp4", 21, 1)]
    assert tree(out) == first
    for changed in (PrepareSettings(short_side=32, keyframe_interval=8, crf=30),
                    PrepareSettings(short_side=32, keyframe_interval=4)):
        calls.clear()
        summary = prepare_videos(src, out, jobs, changed, progress=False)
        assert (summary.done, summary.skipped_existing, calls) == (2, 0, ["v00.mp4", "v01.mp4"])
        assert completed_copy(out / "c0" / "v00.mp4", changed, (src / "c0" / "v00.mp4").stat().st_size) == 20
        assert completed_copy(out / "c0" / "v00.mp4", settings, (src / "c0" / "v00.mp4").stat().st_size) is None
    assert keyframes(out / "c1" / "v01.mp4") == [0, 4, 8, 12, 16, 20]
    # Same size, unreadable content: a rerun that decoded anything would fail.
    for job in jobs:
        (src / job.video).write_bytes(b"\0" * (src / job.video).stat().st_size)
    summary = prepare_videos(src, out, jobs, PrepareSettings(short_side=32, keyframe_interval=4), progress=False)
    assert (summary.done, summary.skipped_existing, summary.failed) == (0, 2, [])


def test_leftovers_of_killed_runs_are_redone_or_removed(tmp_path):
    src, clean, out = tmp_path / "src", tmp_path / "clean", tmp_path / "out"
    jobs = _make_videos(src, 5, 12)
    settings = PrepareSettings(short_side=32, keyframe_interval=4)
    prepare_videos(src, clean, jobs, settings, progress=False)
    prepare_videos(src, out, jobs, settings, progress=False)
    # What a killed run can leave, plus damage a rerun must notice:
    marker_path(out / "c0" / "v00.mp4").unlink()                           # renamed, marker not yet written
    (out / "c1" / "v01.mp4").write_bytes(b"half")                          # a copy of the wrong size
    (out / "c0" / ".v02.partial-99999.mp4").write_bytes(b"half written")   # a partial copy
    (out / "c0" / "v02.mp4").unlink()                                      # ... whose final copy never came
    marker_path(out / "c0" / "v02.mp4").unlink()
    tmp_marker = out / "c1" / f"..v03.mp4.done.4242.{'0' * 32}.tmp"        # atomic_write's temporary file
    tmp_marker.write_text("{")
    summary = prepare_videos(src, out, jobs, settings, progress=False)
    assert (summary.done, summary.skipped_existing, summary.failed) == (3, 2, [])
    assert work_files(out) == []
    assert contents(out) == contents(clean)


class _Killed(BaseException):
    """Stands for SIGKILL at one step of the commit (no handler below catches it)."""


@pytest.mark.parametrize("step", ["replace", "marker"])
def test_a_crash_at_the_commit_leaves_nothing_taken_as_finished(tmp_path, source, monkeypatch, step):
    target = tmp_path / "v.mp4"
    old, new = PrepareSettings(short_side=0, crf=23), PrepareSettings(short_side=0, crf=35)
    prepare_video(str(source), target, old)
    old_bytes, size = target.read_bytes(), source.stat().st_size
    assert completed_copy(target, old, size) == 40

    def killed(*args, **kwargs):
        raise _Killed()

    if step == "replace":  # before the new copy takes the old one's place
        monkeypatch.setattr(prepare.os, "replace", killed)
    else:  # between that and the new marker
        monkeypatch.setattr(prepare, "atomic_write_text", killed)
    with pytest.raises(_Killed):
        prepare_video(str(source), target, new)
    monkeypatch.undo()
    # The old marker went before the copy could change, so neither setting takes the copy as finished.
    assert not marker_path(target).exists()
    assert completed_copy(target, old, size) is None and completed_copy(target, new, size) is None
    assert (target.read_bytes() == old_bytes) == (step == "replace")
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no partial file left (the handler ran)


def test_sigkill_mid_run_then_rerun_equals_clean_run(tmp_path):
    src, clean, out = tmp_path / "src", tmp_path / "clean", tmp_path / "out"
    count = 12
    _make_videos(src, count, 120)  # long enough that the kill lands mid-video even on a busy machine
    args = ["--src", src, "--out", out, "--short-side", "48", "--keyframe-interval", "8"]
    process = subprocess.Popen([sys.executable, str(TOOL), *map(str, args), "--workers", "1", "--no-progress"],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill once one video is finished and the next one is being written.
        deadline = time.monotonic() + 60
        while not (list(out.glob("c*/.*.done")) and list(out.glob("c*/.*.partial-*"))):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no finished video within 60 s"
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "prepared.txt").exists()
    # Every copy with a marker is complete.
    marked = [p for p in out.glob("c*/v*.mp4") if marker_path(p).exists()]
    assert 1 <= len(marked) < count
    for copy in marked:
        source_size = (src / copy.relative_to(out)).stat().st_size
        assert completed_copy(copy, PrepareSettings(48, 8), source_size) == probe(copy, "pyav").num_frames

    def tool_process(*flags: str | Path) -> int:
        return subprocess.run([sys.executable, str(TOOL), *map(str, flags), "--workers", "1", "--no-progress"],
                              cwd=REPO, capture_output=True, timeout=300).returncode

    assert tool_process(*args) == 0
    assert tool_process("--src", src, "--out", clean, "--short-side", "48", "--keyframe-interval", "8") == 0
    assert work_files(out) == []
    assert contents(out) == contents(clean)
    lines = (out / "prepared.txt").read_text().splitlines()
    assert lines == [f"c{i % 2}/v{i:02d}.mp4 {i % 2}" for i in sorted(range(count), key=lambda i: (i % 2, i))]


def test_two_workers_give_the_same_copies(tmp_path):
    src = tmp_path / "src"
    jobs = _make_videos(src, 3, 10)
    one = prepare_videos(src, tmp_path / "one", jobs, PrepareSettings(32, 4), workers=1, progress=False)
    two = prepare_videos(src, tmp_path / "two", jobs, PrepareSettings(32, 4), workers=2, progress=False)
    assert two.prepared == one.prepared
    assert contents(tmp_path / "two") == contents(tmp_path / "one")


# ---------------------------------------------------------------- the tool: list, failures, arguments

def test_list_keeps_order_and_labels_and_reports_bad_videos(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_index_video(src / "z" / "c.mp4", 12)
    make_index_video(src / "a" / "b.avi", 14, fourcc="MJPG")
    make_index_video(src / "a" / "b.mkv", 10)  # its copy would be a/b.mp4 again
    (src / "a" / "text.mp4").write_text("not a video\n")
    listing = tmp_path / "val.txt"
    listing.write_text("z/c.mp4 7\n# a comment\na/text.mp4 1\na/b.avi 2\na/b.mkv 3\nmissing.mp4 0\nz/c.mp4 4\n")
    assert run_tool("--src", src, "--out", out, "--list", listing, "--short-side", "0") == 0
    assert (out / "val_prepared.txt").read_text() == "z/c.mp4 7\na/b.mp4 2\nz/c.mp4 4\n"
    errors = (out / "val_prepare_errors.csv").read_text().splitlines()
    assert errors[0] == "path,reason"
    assert [line.split(",", 1)[0] for line in errors[1:]] == ["a/text.mp4", "a/b.mkv", "missing.mp4"]
    assert "no backend can read it" in errors[1]
    assert errors[2] == "a/b.mkv,copy a/b.mp4 is already the target of a/b.avi"
    assert errors[3] == "missing.mp4,file not found"
    assert "failed: a/text.mp4:" in capsys.readouterr().err
    assert not (out / "a" / "text.mp4").exists() and work_files(out) == []
    assert [frame_index(f) for f in read(out / "a" / "b.mp4", np.arange(14), "pyav")] == list(range(14))
    assert not (out / "classes.txt").exists()
    # --strict: the same run (everything done already) exits 1 because videos failed.
    assert run_tool("--src", src, "--out", out, "--list", listing, "--short-side", "0", "--strict") == 1


def test_folder_per_class_without_list(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_index_video(src / "walk" / "w.avi", 10, fourcc="MJPG")
    make_index_video(src / "run" / "deep" / "r.mp4", 11)
    assert run_tool("--src", src, "--out", out, "--strict") == 0
    assert (out / "prepared.txt").read_text() == "run/deep/r.mp4 0\nwalk/w.mp4 1\n"
    assert (out / "classes.txt").read_text() == "run\nwalk\n"
    assert (out / "prepare_errors.csv").read_text() == "path,reason\n"
    # The short side defaults to 256.
    assert probe(out / "walk" / "w.mp4", "pyav").height == 256


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="preset must be one of"):
        PrepareSettings(preset="warp").check()
    PrepareSettings(preset="veryfast").check()


@pytest.mark.parametrize("flags", [["--crf", "52"], ["--crf", "-1"], ["--keyframe-interval", "0"],
                                   ["--short-side", "1"], ["--codec", "vp9"], ["--bframes", "17"],
                                   ["--workers", "0"]])
def test_bad_flags_exit_2(tmp_path, flags):
    (tmp_path / "src").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_tool("--src", tmp_path / "src", "--out", tmp_path / "out", *flags)
    assert exit_info.value.code == 2


def test_out_inside_or_equal_to_src_exits_2(tmp_path, capsys):
    src = tmp_path / "src"
    make_index_video(src / "a" / "v.mp4", 5)
    assert run_tool("--src", src, "--out", src) == 2
    assert run_tool("--src", src, "--out", src / "copies") == 2
    assert "--out" in capsys.readouterr().err
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*")) == ["a", "a/v.mp4"]
