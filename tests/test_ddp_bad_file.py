"""DDP and a bad video (issue 6): a 2-process gloo run through torchrun where only rank 1's share of the
training list holds an unreadable file.

- ``data.on_error: raise``: rank 1 stops with the one-line error and exit status 2 while rank 0 waits in
  the gradient all-reduce; torchrun then stops rank 0 and the whole run exits non-zero (no hang: the
  test's timeout would fail it).
- ``data.on_error: skip``: no rank raises, the run finishes, and rank 0's ``skipped.csv`` lists the file
  that rank 1 met (skips are gathered from every rank).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data.distributed import DistributedSampler

from badfiles import make_good_videos, make_zero_byte, write_list

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN = 12
BATCH = 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny config whose training list has ``empty.mp4`` at rank 1's third sample of epoch 0 only."""
    root = tmp_path_factory.mktemp("ddp_data")
    lengths = {f"v{i:02d}.mp4": 16 + i for i in range(NUM_TRAIN + 2)}
    make_good_videos(root, lengths)
    make_zero_byte(root, "empty.mp4")
    names = list(lengths)[:NUM_TRAIN]
    # The split torch's DistributedSampler makes (seed train.seed = 0, epoch 0), as build_dataloader uses it.
    shares = [list(DistributedSampler(range(NUM_TRAIN), num_replicas=2, rank=rank, shuffle=True, seed=0))
              for rank in (0, 1)]
    bad_index = shares[1][2]
    assert bad_index not in shares[0]
    names[bad_index] = "empty.mp4"
    write_list(root / "train.txt", [f"{name} {i % 2}" for i, name in enumerate(names)])
    write_list(root / "val.txt", [f"{name} {i % 2}" for i, name in enumerate(list(lengths)[NUM_TRAIN:])])
    write_list(root / "classes.txt", ["left", "right"])
    path = root / "tiny.yaml"
    path.write_text(f"data: {{root: {root}, num_segments: 2, input_size: 32, short_side: 32, batch_size: {BATCH}, "
                    f"num_workers: 0}}\nmodel: {{backbone: resnet18, pretrained: false}}\n"
                    f"train: {{epochs: 1, deterministic: true}}\n")
    return path


def torchrun(config: Path, work: Path, on_error: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools" / "train.py"), "--config", str(config), "--work-dir", str(work), "--device", "cpu",
               "--no-progress", "--opt", f"data.on_error={on_error}"]
    # A hang would end here, as a failed test.
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_raise_on_one_rank_ends_the_whole_run(config: Path, tmp_path: Path) -> None:
    result = torchrun(config, tmp_path / "work", "raise")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"error: {config.parent / 'empty.mp4'}: empty file (0 bytes)" in output.splitlines()
    assert not (tmp_path / "work" / "latest.pth").exists()


def test_skip_on_one_rank_finishes_and_rank_0_reports_it(config: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = torchrun(config, work, "skip")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(work / "skipped.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"path": str(config.parent / "empty.mp4"), "split": "train", "reason": "empty file (0 bytes)"}]
    assert (work / "latest.pth").exists()
