"""tools/check_videos.py on the real files in ../shared/data/real (skipped when absent).

- every actrecog2 video of train.txt, val.txt and test.txt passes (exit 0), labels checked against classes.txt;
- a list mixing every real clip under clips/ (mp4, avi, mkv and the two animated GIFs) with the generated bad
  files of ``badfiles`` reports exactly the bad ones (exit 1).

The GIFs count as videos (FFmpeg's GIF decoder, through PyAV); the H.264 AVI without timestamps and the
Xvid AVI with packed B-frames pass through the reader's PyAV-then-OpenCV fallback, as in training with
``data.backend: auto``. The real files
are reached through a symbolic link in the test's folder, never copied. Two workers, 3 segments: probe and
3 sampled frames per video, to keep the run short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from badfiles import (make_audio_only_avi, make_cut_in_half, make_folder_for_file, make_frame_folder,
                      make_overstated_avi, make_narrow, make_text_as_mp4, make_zero_byte, write_list)

REPO = Path(__file__).resolve().parents[1]
CLIP_SUFFIXES = {".mp4", ".avi", ".mkv", ".gif"}


def check_videos(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "tools" / "check_videos.py"), "--workers", "2",
                           "--num-segments", "3", "--no-progress", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.real
def test_every_actrecog2_video_passes(real_data: Path) -> None:
    root = real_data / "actrecog2"
    lists = [root / f"{split}.txt" for split in ("train", "val", "test")]
    repeated = [arg for path in lists for arg in ("--list", path)]  # --list train.txt --list val.txt ...
    result = check_videos("--src", root, *repeated, "--classes", root / "classes.txt")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.splitlines() == ["69 entries checked, 0 bad line(s)"]


@pytest.mark.real
def test_real_clips_mixed_with_bad_files_report_exactly_the_bad_ones(real_data: Path, tmp_path: Path) -> None:
    (tmp_path / "real").symlink_to(real_data / "clips", target_is_directory=True)
    clips = sorted(path.relative_to(tmp_path).as_posix() for path in (tmp_path / "real").rglob("*")
                   if path.suffix.lower() in CLIP_SUFFIXES and path.is_file())
    assert len(clips) == 17 and {Path(clip).suffix for clip in clips} == CLIP_SUFFIXES
    bad = {  # entry -> start of the reason
        make_zero_byte(tmp_path).name: "empty file (0 bytes)",
        make_cut_in_half(tmp_path).name: "no backend can read it: pyav: cannot open it",
        make_text_as_mp4(tmp_path).name: "no backend can read it: pyav: cannot open it",
        make_audio_only_avi(tmp_path).name: "no backend can read it: pyav: no video stream",
        make_folder_for_file(tmp_path).name: "rawframes: folder without img_00001.jpg",
        "gone.mp4": "no such file or folder",
    }
    readable = [make_overstated_avi(tmp_path).name, make_narrow(tmp_path, 48).name, make_narrow(tmp_path, 72).name]
    make_frame_folder(tmp_path / "frames", 10)  # a good frame folder in a video list: read as frames
    entries = clips[:9] + list(bad) + ["frames"] + readable + clips[9:]
    list_path = write_list(tmp_path / "mixed.txt", [f"{entry} 0" for entry in entries])

    result = check_videos("--src", tmp_path, "--list", list_path)
    assert result.returncode == 1, result.stderr[-3000:]
    *reports, summary = result.stdout.splitlines()
    assert summary == f"{len(entries)} entries checked, {len(bad)} bad line(s)"
    reported = {}
    for line in reports:
        location, path, reason = line.split(": ", 2)
        assert location == f"{list_path}:{entries.index(path) + 1}"
        reported[path] = reason
    assert reported.keys() == bad.keys()
    for entry, start in bad.items():
        assert reported[entry].startswith(start), (entry, reported[entry])
