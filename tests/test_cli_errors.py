"""Config and command-line errors of every tool (issue 6): exit status 2, one line naming the culprit, no traceback.

Each case runs the tool as a user would, in a subprocess. stderr must be either one line ``error: ...`` or
argparse's usage followed by its ``<tool>: error: ...`` line. The cases run two at a time (most tools
import torch, a few seconds each), started together by a module fixture; the test checks one case each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from badfiles import write_list
from videos import make_index_video

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # several tool subprocesses, each importing torch


def cases(d: Path) -> dict[str, tuple[str, list[str], str]]:
    """Case id -> (tool, arguments, the exact error line expected); paths under the fixture folder ``d``."""
    missing = d / "missing"
    return {
        "train-unknown-key": ("train.py", ["--config", d / "unknown_key.yaml", "--work-dir", d / "w"],
                              "error: train.lrr: unknown key (did you mean 'lr'?)"),
        "train-wrong-type": ("train.py", ["--config", d / "good.yaml", "--work-dir", d / "w", "--opt", "train.lr=abc"],
                             "error: train.lr: expected float, got 'abc'"),
        "train-missing-config": ("train.py", ["--config", missing / "c.yaml", "--work-dir", d / "w"],
                                 f"error: --config {missing / 'c.yaml'}: no such file"),
        "train-bad-list-line": ("train.py", ["--config", d / "good.yaml", "--work-dir", d / "w",
                                             "--opt", "data.train_list=bad_line.txt"],
                                f"error: {d / 'bad_line.txt'}:2: expected 'PATH LABEL', got 'a.mp4' (missing label)"),
        "train-bad-flag": ("train.py", ["--bogus"], "train.py: error: unrecognized arguments: --bogus"),
        "test-missing-checkpoint": ("test.py", ["--config", d / "good.yaml", "--checkpoint", missing / "best.pth",
                                                "--out", d / "o", "--device", "cpu"],
                                    f"error: {missing / 'best.pth'}: file not found"),
        "test-bad-flag": ("test.py", ["--config", d / "good.yaml", "--checkpoint", d / "x.pth", "--out", d / "o",
                                      "--crops", "5"],
                          "test.py: error: argument --crops: invalid choice: 5 (choose from 1, 3, 10)"),
        "extract_frames-missing-src": ("extract_frames.py", ["--src", missing, "--out", d / "o"],
                                       f"error: --src {missing}: not a folder"),
        "extract_frames-bad-flag": ("extract_frames.py", ["--src", d, "--out", d / "o", "--quality", "200"],
                                    "extract_frames.py: error: argument --quality: must be in 0..100, got 200"),
        "check_videos-missing-list": ("check_videos.py", ["--src", d, "--list", missing / "l.txt"],
                                      f"error: --list {missing / 'l.txt'}: no such file"),
        "check_videos-bad-flag": ("check_videos.py", ["--src", d, "--list", d / "train.txt", "--workers", "-1"],
                                  "check_videos.py: error: argument --workers: must be >= 0, got -1"),
        "video_info-missing-list": ("video_info.py", ["--src", d, "--list", missing / "l.txt", "--out-file", d / "i.csv"],
                                    f"error: [Errno 2] No such file or directory: '{missing / 'l.txt'}'"),
        "video_info-bad-flag": ("video_info.py", ["--src", d, "--list", d / "train.txt", "--out-file", d / "i.csv",
                                                  "--workers", "0"],
                                "video_info.py: error: argument --workers: must be >= 1, got 0"),
        "build_lists-missing-src": ("build_lists.py", ["--dataset", "folder", "--src", missing, "--out", d / "o"],
                                    f"error: {missing}: not a folder"),
        "build_lists-bad-flag": ("build_lists.py", ["--dataset", "ucf101", "--src", d, "--out", d / "o", "--flat"],
                                 "build_lists.py: error: --flat applies to --dataset kinetics only"),
        "extract_features-wrong-type": ("extract_features.py", ["--config", d / "good.yaml", "--list", d / "train.txt",
                                                                "--out", d / "o", "--opt", "data.num_segments=two"],
                                        "error: data.num_segments: expected int, got 'two'"),
        "extract_features-missing-list": ("extract_features.py", ["--config", d / "good.yaml", "--list",
                                                                  missing / "l.txt", "--out", d / "o"],
                                          f"error: {missing / 'l.txt'}: list not found"),
        "fuse_scores-missing-file": ("fuse_scores.py", ["--scores", missing / "a.npy", "--list", d / "train.txt",
                                                        "--classes", d / "classes.txt", "--out", d / "o"],
                                     f"error: --scores {missing / 'a.npy'}: no such file"),
        "fuse_scores-bad-flag": ("fuse_scores.py", ["--scores", d / "a.npy", "--weights", "x", "--list",
                                                    d / "train.txt", "--classes", d / "classes.txt", "--out", d / "o"],
                                 "fuse_scores.py: error: argument --weights: invalid float value: 'x'"),
    }


CASE_IDS = list(cases(Path("/")))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, subprocess.CompletedProcess]]:
    """Every case's expected line and finished process, run two at a time."""
    d = tmp_path_factory.mktemp("cli")
    make_index_video(d / "a.mp4", 12)
    write_list(d / "classes.txt", ["run", "jump"])
    write_list(d / "train.txt", ["a.mp4 0"])
    write_list(d / "bad_line.txt", ["a.mp4 0", "a.mp4"])
    write_list(d / "test.txt", ["a.mp4 1"])
    (d / "good.yaml").write_text(f"data: {{root: {d}, num_workers: 0}}\nmodel: {{backbone: resnet18, pretrained: false}}\n")
    (d / "unknown_key.yaml").write_text(f"data: {{root: {d}}}\ntrain: {{lrr: 0.1}}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}

    def run(case: tuple[str, list[str], str]) -> tuple[str, subprocess.CompletedProcess]:
        tool, args, expected = case
        return expected, subprocess.run([sys.executable, str(REPO / "tools" / tool), *map(str, args)], cwd=REPO,
                                        env=env, capture_output=True, text=True, timeout=300)

    table = cases(d)
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(table, pool.map(run, table.values())))


@pytest.mark.parametrize("case", CASE_IDS)
def test_error_is_one_line_with_exit_status_2(results, case: str) -> None:
    expected, result = results[case]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.rstrip("\n").split("\n")
    if expected.startswith("error: "):
        assert lines == [expected]
    else:  # argparse: "usage: ..." (wrapped over several lines), then "<tool>: error: ..."
        assert lines[0].startswith("usage: ") and all(line.startswith(" ") for line in lines[1:-1])
        assert lines[-1] == expected
