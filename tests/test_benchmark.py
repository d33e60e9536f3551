"""tools/benchmark.py and tsn.measure.benchmark on tiny data: the fields and counts of each mode (no timings)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tiny_training import make_tiny_data, run_tool, tiny_overrides, tool_env
from tsn.config import load_config
from tsn.measure.benchmark import cpu_seconds, format_table, model_benchmark
from tsn.measure.build import loader_benchmark, train_benchmark


@pytest.fixture(scope="module")
def tiny_opts(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Overrides for the tiny data set: 8 train and 4 val videos, batch 2 of 2 segments at 32 px."""
    data = make_tiny_data(tmp_path_factory.mktemp("bench"))
    return tiny_overrides(data) + ["data.batch_size=2", "data.input_size=32", "data.short_side=32"]


@pytest.fixture(scope="module")
def tiny_cfg(tiny_opts: list[str]):
    return load_config(None, tiny_opts)


def test_loader_benchmark_reads_the_same_clips_every_pass(tiny_cfg) -> None:
    result = loader_benchmark(tiny_cfg, "train", clips=4, passes=3)
    assert (result["mode"], result["split"], result["workers"], result["clips"]) == ("loader", "train", 0, 4)
    assert result["clip_shape"] == [2, 3, 32, 32] and result["skipped"] == 0
    assert len(result["pass_clips_per_s"]) == 3 and result["clips_per_s"] > 0 and result["cpu_ms_per_clip"] > 0
    val = loader_benchmark(tiny_cfg, "val", passes=1)
    assert val["clips"] == 4 and val["clips_per_s"] == val["clips_per_s_first"]


def test_model_benchmark_reports_a_train_step_rate_on_cpu() -> None:
    result = model_benchmark("resnet18", batch=2, segments=2, amp="bf16", channels_last=True, steps=1,
                             input_size=32, warmup=0, num_classes=3, temporal="tsm")
    # amp acts on CUDA only, and says so on the CPU; channels_last acts on every device.
    assert (result["amp"], result["channels_last"], result["steps"], result["temporal"]) == ("none", True, 1, "tsm")
    assert result["images_per_s"] == pytest.approx(2 * result["clips_per_s"], rel=0.02)
    assert result["cpu_user_s"] > 0 and 0 <= result["kernel_share"] < 1


def test_cpu_seconds_gives_the_kernel_share_of_the_process_cpu_time() -> None:
    before = os.times_result((10.0, 2.0, 0.0, 0.0, 100.0))
    after = os.times_result((13.0, 3.0, 0.0, 0.0, 102.0))  # 3 s user, 1 s kernel
    assert cpu_seconds(before, after) == {"cpu_user_s": 3.0, "cpu_system_s": 1.0, "kernel_share": 0.25}
    assert cpu_seconds(before, before)["kernel_share"] == 0.0


def test_train_benchmark_compares_the_loader_with_a_batch_in_memory(tiny_cfg, tmp_path: Path) -> None:
    result = train_benchmark(tiny_cfg, steps=1, warmup=0, profile_dir=str(tmp_path / "prof"))
    assert result["batch_shape"] == [2, 2, 3, 32, 32]
    assert result["ratio"] == pytest.approx(result["loader_steps_per_s"] / result["memory_steps_per_s"], rel=0.01)
    assert list((tmp_path / "prof").glob("*.pt.trace.json"))  # what TensorBoard's profiler plugin opens


def test_tool_prints_one_json_line_or_a_table(tiny_opts: list[str], tmp_path: Path) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("")
    opts = [arg for opt in tiny_opts for arg in ("--opt", opt)]
    done = run_tool("benchmark.py", ["loader", "--config", str(config), *opts, "--passes", "2", "--workers", "0"],
                    env=tool_env())
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout)
    assert (line["mode"], line["workers"], line["clips"], line["pass_clips_per_s"].__len__()) == ("loader", 0, 8, 2)
    assert format_table({"a": 1.5, "long_key": "x"}) == "a         1.500\nlong_key  x"
    missing = run_tool("benchmark.py", ["loader", "--config", str(tmp_path / "none.yaml")], env=tool_env())
    assert missing.returncode == 2 and "config file not found" in missing.stderr
