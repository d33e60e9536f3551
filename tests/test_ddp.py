"""DDP through torchrun: two CPU processes (gloo) train exactly what one process does on the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_training import REPO_ROOT, make_tiny_data, restored_global_state, tiny_overrides, tool_env
from tsn.config import load_config, save_config
from tsn.checkpoint import load_checkpoint
from tsn.training.build import train

# The same global batch in both runs: DistributedSampler shuffles with torch.randperm seeded
# with seed + epoch, exactly as the single-process order does, and deals the permutation out
# round-robin (rank r takes positions r, r + 2, ...), so with 2 ranks x batch 2 the step-s
# global batch is positions 4s..4s+3 of the permutation, the single process's batch s of 4.
# Training samples depend only on (seed, epoch, index), so both runs see identical clips.
# What still could differ is removed: dropout is 0 (ranks would draw masks from the same seed
# for different samples) and the backbone is frozen, so no BatchNorm computes statistics over
# the per-rank half batch. The head still trains, at a rate where gradients summed instead of
# averaged over ranks (twice the step) change the losses from step 2 on by about 2x, and
# unsynchronised gradients change the weights.
DDP_OPTS = ["model.freeze_backbone=true", "model.dropout=0.0", "train.lr=0.05", "train.scheduler.name=none",
            "train.scheduler.warmup_epochs=0", "train.epochs=2"]
# Float32 sums in another order (per-rank partial sums, then the all-reduce) are the only
# difference: relative 1e-5 on losses, 1e-5 absolute on weights.
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _global_state():
    with restored_global_state():
        yield


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_alone_and_on_two_ranks(cfg, tmp_path: Path) -> tuple[Path, Path]:
    """``cfg`` trained in this process (``tmp_path/single``) and by torchrun on 2 CPU ranks with half its batch
    each (``tmp_path/ddp``): the same global batch."""
    single = tmp_path / "single"
    train(cfg, single, device="cpu", progress=False)
    config = tmp_path / "ddp.yaml"
    save_config(cfg, config)
    ddp = tmp_path / "ddp"
    torchrun(REPO_ROOT / "tools" / "train.py", "--config", str(config), "--work-dir", str(ddp), "--device", "cpu",
             "--no-progress", "--opt", f"data.batch_size={cfg.data.batch_size // 2}")
    return single, ddp


def test_two_process_gloo_ddp_matches_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    data = make_tiny_data(tmp_path / "data")  # 8 training videos, 4 validation videos
    # 5 validation videos on 2 ranks: DistributedSampler pads rank 1 with video 0 again, which must
    # not count twice
    lines = (data.root / "val.txt").read_text().splitlines() + (data.root / "train.txt").read_text().splitlines()[:1]
    (data.root / "val5.txt").write_text("\n".join(lines) + "\n")
    cfg = load_config(None, [*tiny_overrides(data), *DDP_OPTS, "data.val_list=val5.txt"])
    single, ddp = train_alone_and_on_two_ranks(cfg, tmp_path)
    assert "8 train and 5 val videos; 2 steps per epoch on 2 process(es)" in (ddp / "train.log").read_text()

    # Metrics reduced over both ranks: every video counted once, losses those of one process.
    got, want = read_jsonl(ddp / "metrics.jsonl"), read_jsonl(single / "metrics.jsonl")
    assert [r["epoch"] for r in got] == [1, 2]  # one line per epoch: only rank 0 wrote
    for g, w in zip(got, want):
        assert g["train_samples"] == w["train_samples"] == 8
        assert g["val_samples"] == w["val_samples"] == 5  # each video once, the padding repeat left out
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=RTOL)
        assert g["val_loss"] == pytest.approx(w["val_loss"], rel=RTOL)
        assert g["train_top1"] == w["train_top1"] and g["val_top1"] == w["val_top1"]
        assert g["lr"] == w["lr"]
    assert want[1]["train_loss"] < want[0]["train_loss"]  # the head did learn, so weights moved

    final, expected = load_checkpoint(ddp / "latest.pth"), load_checkpoint(single / "latest.pth")
    assert final["model"].keys() == expected["model"].keys()  # saved unwrapped: no "module." prefix
    for name, tensor in expected["model"].items():
        if name.startswith("backbone."):
            assert torch.equal(final["model"][name], tensor), name  # frozen
        else:
            torch.testing.assert_close(final["model"][name], tensor, rtol=0, atol=RTOL, msg=name)

    # Only rank 0 wrote files: the same files as the single run, one TensorBoard event file.
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    assert len(list((ddp / "tb").iterdir())) == 1


def test_two_process_ddp_with_the_class_balanced_sampler_matches_one_process(tmp_path: Path) -> None:
    """``train.class_balance: sampler`` under DDP: ``ClassBalancedOrder`` deals its epoch out round-robin, as
    DistributedSampler does, so 2 ranks x batch 2 train on the single process's global batches of 4."""
    data = make_tiny_data(tmp_path / "data")  # 4 + 4 training videos; class 1 keeps 1: 4 + 4 draws
    lines = (data.root / "train.txt").read_text().splitlines()
    ones = [line for line in lines if line.split()[-1] == "1"]
    (data.root / "train.txt").write_text("\n".join([l for l in lines if l.split()[-1] == "0"] + ones[:1]) + "\n")
    cfg = load_config(None, [*tiny_overrides(data), *DDP_OPTS, "train.class_balance=sampler"])
    single, ddp = train_alone_and_on_two_ranks(cfg, tmp_path)
    got, want = read_jsonl(ddp / "metrics.jsonl"), read_jsonl(single / "metrics.jsonl")
    assert [r["train_samples"] for r in got] == [r["train_samples"] for r in want] == [8, 8]  # draws, not videos
    for g, w in zip(got, want):
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=RTOL)
        assert g["train_top1"] == w["train_top1"] and g["val_top1"] == w["val_top1"]


def torchrun(script: Path, *args: str) -> None:
    """``script`` on 2 CPU processes (gloo); fails the test with its stderr when it fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               *args]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=tool_env())
    assert done.returncode == 0, done.stderr[-3000:]


def test_ddp_resume_gives_the_weights_of_an_uninterrupted_ddp_run(tmp_path: Path) -> None:
    # Dropout and mixup draw on every rank: each rank must draw its own numbers (a stream seeded from
    # (seed, rank)) and, after a resume, go on from its own states, not from rank 0's.
    data = make_tiny_data(tmp_path / "data")
    cfg = load_config(None, [*tiny_overrides(data), *DDP_OPTS, "model.dropout=0.5", "train.mixup_alpha=0.4",
                             "data.batch_size=2"])
    config = tmp_path / "ddp.yaml"
    save_config(cfg, config)
    until = REPO_ROOT / "tests" / "train_until.py"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(until, str(config), str(straight), "2")
    torchrun(until, str(config), str(resumed), "1")
    torchrun(until, str(config), str(resumed), "2", "--resume")

    final, expected = load_checkpoint(resumed / "latest.pth"), load_checkpoint(straight / "latest.pth")
    assert final["epoch"] == expected["epoch"] == 2
    for name, tensor in expected["model"].items():
        assert torch.equal(final["model"][name], tensor), name
    # One random state per rank, and the ranks' differ (each seeded from (seed, rank)).
    assert len(expected["rng"]) == len(expected["mixup_rng"]) == 2
    assert not torch.equal(expected["rng"][0]["torch"], expected["rng"][1]["torch"])
    assert expected["mixup_rng"][0] != expected["mixup_rng"][1]
