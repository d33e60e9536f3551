"""Cross-validation: fold assignment (stratified, grouped, seeded) and tools/cross_validate.py end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tiny_training import make_tiny_data, restored_global_state, run_tool, tiny_overrides, tool_env
from tsn.data.lists import VideoRecord, read_video_list
from tsn.apps.crossval import CrossValResult, FoldResult, assign_folds, format_table, group_of


@pytest.fixture(autouse=True)
def _global_state():
    with restored_global_state():
        yield


def records(per_class: list[int], groups_of: int = 1) -> list[VideoRecord]:
    """Videos ``c{label}/g{group}_{i}.mp4``: consecutive runs of ``groups_of`` videos of a class share a group."""
    out = []
    for label, count in enumerate(per_class):
        for i in range(count):
            out.append(VideoRecord(f"c{label}/g{label}x{i // groups_of}_{i}.mp4", label))
    return out


def test_ungrouped_folds_are_stratified_and_cover_every_video() -> None:
    items = records([10, 7, 5, 13])
    folds = assign_folds(items, 3, seed=0)
    assert folds.shape == (len(items),) and set(folds.tolist()) == {0, 1, 2}
    labels = np.array([item.label for item in items])
    for label in range(4):
        counts = np.bincount(folds[labels == label], minlength=3)
        assert counts.max() - counts.min() <= 1, (label, counts)


def test_folds_are_seeded() -> None:
    items = records([8, 8, 8])
    first = assign_folds(items, 4, seed=1)
    np.testing.assert_array_equal(first, assign_folds(items, 4, seed=1))
    assert not np.array_equal(first, assign_folds(items, 4, seed=2))


def test_grouped_folds_never_split_a_group() -> None:
    items = records([12, 12, 9], groups_of=3)  # 4 + 4 + 3 groups of 3 videos
    folds = assign_folds(items, 2, seed=0, group=r"/(g\d+x\d+)_")
    by_group: dict[str, set[int]] = {}
    for item, fold in zip(items, folds):
        by_group.setdefault(group_of(item.path, re.compile(r"/(g\d+x\d+)_")), set()).add(int(fold))
    assert len(by_group) == 11 and all(len(f) == 1 for f in by_group.values())
    labels = np.array([item.label for item in items])
    for label in range(3):  # whole groups of 3: per-class counts differ by at most one group
        counts = np.bincount(folds[labels == label], minlength=2)
        assert abs(int(counts[0]) - int(counts[1])) <= 3


def test_group_pattern_that_does_not_match_names_the_path() -> None:
    with pytest.raises(ValueError, match=r"c0/g0x0_0\.mp4: --group pattern"):
        assign_folds(records([4, 4]), 2, group=r"actor(\d+)")
    with pytest.raises(ValueError, match="cannot fill"):
        assign_folds(records([2]), 3)


def test_table_mean_and_sample_std() -> None:
    result = CrossValResult((FoldResult(1, 60, 60, 0.8, 0.75, 10.0, 2.0), FoldResult(2, 60, 60, 0.9, 0.85, 11.0, 2.0)))
    assert result.mean_std("top1") == pytest.approx((0.85, np.std([0.8, 0.9], ddof=1)))
    assert "mean top1 0.8500 +- 0.0707" in format_table(result)


def test_cross_validate_tool_on_generated_data(tmp_path: Path) -> None:
    data = make_tiny_data(tmp_path / "data", train_per_class=3, val_per_class=1)
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    args = ["--config", str(config), "--work-dir", str(tmp_path / "cv"), "--list", "train.txt", "--folds", "2",
            "--seed", "0", "--no-progress"]
    for item in [*tiny_overrides(data, epochs=1), "test.num_clips=1", "test.crops=1", "data.batch_size=2"]:
        args += ["--opt", item]
    done = run_tool("cross_validate.py", args, env=tool_env())
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert [fold["fold"] for fold in summary["folds"]] == [1, 2]
    assert sum(fold["test_videos"] for fold in summary["folds"]) == 6
    assert {"mean", "std"} <= summary["top1"].keys()
    assert "mean top1" in done.stdout
    # the generated fold lists partition the list, and each fold tested its last checkpoint
    whole = read_video_list(data.root / "train.txt")
    tests = [read_video_list(tmp_path / "cv" / "folds" / f"fold{i}_test.txt") for i in (1, 2)]
    assert sorted(r.path for part in tests for r in part) == sorted(r.path for r in whole)
    for i in (1, 2):
        fold_dir = tmp_path / "cv" / f"fold{i}"
        assert (fold_dir / "test" / "metrics.json").is_file() and (fold_dir / "latest.pth").is_file()
        records_ = [json.loads(line) for line in (fold_dir / "metrics.jsonl").read_text().splitlines()]
        assert records_[-1]["val_top1"] is not None  # validated once, after the last epoch


def test_a_class_already_over_its_share_elsewhere_does_not_hide_the_one_added() -> None:
    # labels 2, 2, 2, 1, 2 in 3 folds: a score over all classes put two class-2 videos in each of two
    # folds and none in the third
    items = [VideoRecord(f"v{i}.mp4", label) for i, label in enumerate([2, 2, 2, 1, 2])]
    folds = assign_folds(items, 3, seed=0)
    counts = np.bincount(folds[[0, 1, 2, 4]], minlength=3)
    assert counts.max() - counts.min() <= 1
