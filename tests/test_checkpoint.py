import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tsn.checkpoint import (
    CheckpointError,
    capture_rng_state,
    generator_state,
    load_checkpoint,
    load_latest_good,
    previous_path,
    restore_rng_state,
    save_checkpoint,
    set_generator_state,
)


def state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((3, 2), float(epoch))}, "best": 0.5, "config": {"a": [1, 2]}}


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_load_round_trip_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "latest.pth"
    save_checkpoint(state(1), path)
    assert names(tmp_path) == ["latest.pth"]
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 1 and loaded["config"] == {"a": [1, 2]}
    assert torch.equal(loaded["model"]["w"], torch.full((3, 2), 1.0))
    assert loaded["model"]["w"].device.type == "cpu"


def test_second_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "latest.pth"
    save_checkpoint(state(1), path)
    save_checkpoint(state(2), path)
    save_checkpoint(state(3), path)
    assert names(tmp_path) == ["latest.prev.pth", "latest.pth"]
    assert previous_path(path) == tmp_path / "latest.prev.pth"
    assert load_checkpoint(path)["epoch"] == 3
    assert load_checkpoint(tmp_path / "latest.prev.pth")["epoch"] == 2
    save_checkpoint(state(4), tmp_path / "best.pth", keep_previous=False)
    assert names(tmp_path) == ["best.pth", "latest.prev.pth", "latest.pth"]


def test_truncated_latest_is_detected_and_the_previous_one_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "latest.pth"
    save_checkpoint(state(1), path)
    save_checkpoint(state(2), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short / a disk that lost the tail
    with pytest.raises(CheckpointError, match=r"latest\.pth: truncated or corrupt"):
        load_checkpoint(path)
    with caplog.at_level(logging.WARNING, logger="tsn.checkpoint"):
        loaded, used = load_latest_good(tmp_path)
    assert used == tmp_path / "latest.prev.pth"
    assert loaded["epoch"] == 1
    assert "latest.pth: truncated or corrupt" in caplog.text
    assert "latest.prev.pth" in caplog.text


def test_saving_over_a_truncated_latest_keeps_the_good_previous(tmp_path: Path) -> None:
    path = tmp_path / "latest.pth"
    save_checkpoint(state(1), path)
    save_checkpoint(state(2), path)
    path.write_bytes(path.read_bytes()[:100])
    save_checkpoint(state(3), path)
    assert load_checkpoint(path)["epoch"] == 3
    assert load_checkpoint(previous_path(path))["epoch"] == 1  # not replaced by the broken file


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file (0 bytes)"),
        (b"this is not a checkpoint" * 10, "truncated or corrupt"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "latest.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: {reason}")
    assert "\n" not in str(info.value)


def test_missing_file_directory_and_non_dict(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pth: file not found"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth: expected a dict, got list"):
        load_checkpoint(tmp_path / "list.pth")


def test_objects_refused_by_weights_only_loading_are_reported(tmp_path: Path) -> None:
    torch.save({"rng": np.random.default_rng(0)}, tmp_path / "obj.pth")
    with pytest.raises(CheckpointError, match=r"obj\.pth: cannot be loaded \(UnpicklingError"):
        load_checkpoint(tmp_path / "obj.pth")


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "latest.pth"
    save_checkpoint(state(1), path)
    with pytest.raises(Exception):
        save_checkpoint({"unpicklable": lambda: None}, path)  # fails half-way through torch.save
    assert load_checkpoint(path)["epoch"] == 1
    assert not [name for name in names(tmp_path) if name.endswith(".tmp")]


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".latest.pth.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".other.pth.x.tmp").write_bytes(b"not ours")
    save_checkpoint(state(1), tmp_path / "latest.pth")
    assert names(tmp_path) == [".other.pth.x.tmp", "latest.pth"]


def test_missing_latest_falls_back_and_nothing_usable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"latest\.pth: file not found"):
        load_latest_good(tmp_path)
    save_checkpoint(state(1), tmp_path / "latest.pth")
    save_checkpoint(state(2), tmp_path / "latest.pth")
    (tmp_path / "latest.pth").unlink()  # killed between the two renames of an older scheme
    loaded, used = load_latest_good(tmp_path)
    assert (loaded["epoch"], used.name) == (1, "latest.prev.pth")
    (tmp_path / "latest.pth").write_bytes(b"")
    (tmp_path / "latest.prev.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError) as info:
        load_latest_good(tmp_path)
    message = str(info.value)
    assert "latest.pth: empty file (0 bytes)" in message and "latest.prev.pth: truncated or corrupt" in message


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    rng = np.random.default_rng(5)
    rng.random()
    save_checkpoint({"rng": capture_rng_state(), "mixup_rng": generator_state(rng)}, tmp_path / "latest.pth")
    expected = draws()
    expected_generator = rng.random(4).tolist()

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    other = np.random.default_rng(99)
    loaded = load_checkpoint(tmp_path / "latest.pth")
    restore_rng_state(loaded["rng"])
    set_generator_state(other, loaded["mixup_rng"])
    assert draws() == expected
    assert other.random(4).tolist() == expected_generator


def test_inference_weights_prefer_the_weight_average() -> None:
    from tsn.checkpoint import inference_weights

    model, average = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert inference_weights({"model": model, "ema": {"model": average, "updates": 3}}) is average
    assert inference_weights({"model": model}) is model
    assert inference_weights(model) is model  # a bare state dict
