"""tools/video_info.py: one CSV row per list entry, unreadable videos with their reason."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from videos import make_index_video

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "video_info.py"


def test_video_info_writes_one_row_per_video_with_reasons(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    make_index_video(root / "a" / "v1.mp4", 30)
    make_index_video(root / "b" / "v2.mp4", 20, width=72, height=48)  # decord fails: OpenCV reads it
    (root / "bad.mp4").write_text("not a video\n")
    listing = tmp_path / "list.txt"
    listing.write_text("# path label\na/v1.mp4 0\nbad.mp4 1\nb/v2.mp4 1\n")
    out = tmp_path / "out" / "info.csv"
    done = subprocess.run([sys.executable, str(TOOL), "--src", str(root), "--list", str(listing), "--out-file", str(out),
                           "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"3 videos, 1 unreadable -> {out}" in done.stdout
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "height", "width", "num_frames", "fps", "backend", "error"]
    assert rows[1] == ["a/v1.mp4", "48", "64", "30", "25.0", "pyav", ""]
    assert rows[2][:6] == ["bad.mp4", "", "", "", "", ""]
    assert rows[2][6].startswith("no backend can read it: pyav: cannot open it")
    assert rows[3] == ["b/v2.mp4", "48", "72", "20", "25.0", "pyav", ""]
    assert len(rows) == 4


def test_video_info_bad_list_exits_2(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("a/v1.mp4\n")  # no label
    done = subprocess.run([sys.executable, str(TOOL), "--src", str(tmp_path), "--list", str(listing),
                           "--out-file", str(tmp_path / "info.csv")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {listing}:1: expected 'PATH LABEL', got 'a/v1.mp4' (missing label)"
    assert not (tmp_path / "info.csv").exists()
