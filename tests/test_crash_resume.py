"""Crash-safe training (issue 6): tools/train.py killed with SIGKILL mid-epoch, then ``--resume``, ends with
exactly the weights of an uninterrupted run; a truncated ``latest.pth`` is reported on resume and the previous
checkpoint used, with the same final weights.

Tiny deterministic set-up: ResNet-18 from scratch, 64 px input, 2 segments, batch 2, no loader workers,
``train.deterministic: true``, 12 training videos made by the test. All runs use one OpenMP thread, as a
resumed run uses the thread count of the run it continues.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from badfiles import make_good_videos, write_list
from tsn.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3

pytestmark = pytest.mark.slow  # several tool subprocesses, each importing torch


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash_data")
    lengths = {f"v{i:02d}.mp4": 16 + i for i in range(16)}
    make_good_videos(root, lengths)
    names = list(lengths)
    write_list(root / "train.txt", [f"{name} {i % 2}" for i, name in enumerate(names[:12])])
    write_list(root / "val.txt", [f"{name} {i % 2}" for i, name in enumerate(names[12:])])
    write_list(root / "classes.txt", ["left", "right"])
    path = root / "tiny.yaml"
    path.write_text(f"data: {{root: {root}, num_segments: 2, input_size: 64, short_side: 64, batch_size: 2, "
                    f"num_workers: 0}}\nmodel: {{backbone: resnet18, pretrained: false}}\n"
                    f"train: {{epochs: {EPOCHS}, deterministic: true}}\n")
    return path


def start(config: Path, work: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py"), "--config", str(config),
                             "--work-dir", str(work), "--device", "cpu", "--no-progress", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def second_checkpoint_written(work: Path) -> bool:
    """Whether ``latest.pth`` is a newer file than ``latest.prev.pth`` (both exist, other inodes)."""
    try:
        return (work / "latest.pth").stat().st_ino != (work / "latest.prev.pth").stat().st_ino
    except FileNotFoundError:
        return False


def finish(process: subprocess.Popen) -> str:
    """Wait for a run; its stderr. Fails the test when it did not exit 0."""
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def assert_same_state(work: Path, reference: Path) -> None:
    """Every tensor of the model and of the optimizer state is bit for bit the reference's."""
    state, expected = load_checkpoint(work / "latest.pth"), load_checkpoint(reference / "latest.pth")
    assert state["epoch"] == expected["epoch"] == EPOCHS
    assert state["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(state["model"][name], tensor), name
    # every optimizer state tensor (AdamW's moments and step counts; SGD's momentum buffers)
    moments, expected_moments = state["optimizer"]["state"], expected["optimizer"]["state"]
    assert moments.keys() == expected_moments.keys() and len(moments) > 0
    for index, slots in expected_moments.items():
        assert slots.keys() == moments[index].keys()
        for key, value in slots.items():
            assert torch.equal(torch.as_tensor(moments[index][key]), torch.as_tensor(value)), (index, key)


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(config: Path, tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = start(config, straight)
    victim = start(config, killed)
    try:
        # Kill once the second epoch's checkpoint has replaced the first's (which stays as
        # latest.prev.pth, a hard link to the old file): in epoch 3, two good checkpoints on disk.
        deadline = time.monotonic() + 300
        while not second_checkpoint_written(killed):
            assert victim.poll() is None, f"the run ended before it could be killed: {victim.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no second checkpoint within 300 s"
            time.sleep(0.005)
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.kill()
        victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    finish(reference)
    assert load_checkpoint(killed / "latest.pth")["epoch"] == 2

    corrupt = tmp_path / "corrupt"
    shutil.copytree(killed, corrupt)
    data = (corrupt / "latest.pth").read_bytes()
    (corrupt / "latest.pth").write_bytes(data[: len(data) // 2])  # as a disk fault or a cut copy leaves it

    resumed, recovered = start(config, killed, "--resume"), start(config, corrupt, "--resume")
    resumed_log, recovered_log = finish(resumed), finish(recovered)

    assert f"resumed from {killed / 'latest.pth'} at epoch 2" in resumed_log
    assert_same_state(killed, straight)

    assert (f"{corrupt / 'latest.pth'}: truncated or corrupt: not a complete torch.save archive "
            f"({len(data) // 2} bytes); resuming from the previous checkpoint {corrupt / 'latest.prev.pth'}"
            in recovered_log)
    assert f"resumed from {corrupt / 'latest.prev.pth'} at epoch 1" in recovered_log
    assert_same_state(corrupt, straight)
