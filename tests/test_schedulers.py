import math

import pytest
import torch

from tsn.config import load_config
from tsn.training.schedulers import LRSchedule, build_scheduler


def make_optimizer(lrs: tuple[float, ...] = (1.0, 0.1)) -> torch.optim.SGD:
    """Two parameter groups (head at lr, backbone at lr * 0.1), as param_groups gives them."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def run(schedule: LRSchedule, iterations: int) -> list[list[float]]:
    """Rates used by each of ``iterations`` iterations."""
    seen = []
    for _ in range(iterations):
        seen.append(schedule.last_lrs)
        schedule.step_iteration()
    return seen


def test_warmup_then_cosine_sequence() -> None:
    optimizer = make_optimizer()
    schedule = LRSchedule(optimizer, "cosine", epochs=3, iters_per_epoch=2, warmup_epochs=1, warmup_start_factor=0.1)
    # W = 2 warm-up iterations: 0.1, 0.1 + 0.9 * 1/2; then cosine over N - W = 4 iterations:
    # (1 + cos(pi * k / 4)) / 2 for k = 0..3 = 1, 0.853553, 0.5, 0.146447; 0 after the last one
    factors = [0.1, 0.55, 1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2]
    seen = run(schedule, 6)
    for used, factor in zip(seen, factors):
        assert used == pytest.approx([1.0 * factor, 0.1 * factor], abs=1e-12)
    assert seen[3][0] == pytest.approx(0.85355339, abs=1e-8)
    assert schedule.last_lrs == pytest.approx([0.0, 0.0], abs=1e-12)


def test_cosine_ends_at_min_lr_ratio() -> None:
    schedule = LRSchedule(make_optimizer((1.0,)), "cosine", epochs=2, iters_per_epoch=2, min_lr_ratio=0.2)
    # no warm-up: 0.2 + 0.8 * (1 + cos(pi k / 4)) / 2
    assert [lrs[0] for lrs in run(schedule, 4)] == pytest.approx(
        [1.0, 0.2 + 0.8 * (1 + math.sqrt(0.5)) / 2, 0.6, 0.2 + 0.8 * (1 - math.sqrt(0.5)) / 2], abs=1e-12
    )
    assert schedule.last_lrs == pytest.approx([0.2])


def test_warmup_then_multistep_sequence() -> None:
    schedule = LRSchedule(
        make_optimizer(),
        "multistep",
        epochs=4,
        iters_per_epoch=2,
        milestones=(2, 3),
        gamma=0.1,
        warmup_epochs=1,
        warmup_start_factor=0.5,
    )
    # epoch 0 warms up 0.5 -> 0.75; epoch 1 full; epoch 2 x0.1; epoch 3 x0.01
    factors = [0.5, 0.75, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    for used, factor in zip(run(schedule, 8), factors):
        assert used == pytest.approx([factor, 0.1 * factor], abs=1e-12)


def test_plateau_reduces_after_patience_and_matches_torch() -> None:
    metrics = [0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.8]
    schedule = LRSchedule(make_optimizer((1.0,)), "plateau", epochs=8, iters_per_epoch=1, gamma=0.5, patience=1)
    seen = []
    for metric in metrics:
        schedule.step_iteration()
        schedule.step_epoch(metric)
        seen.append(schedule.last_lrs[0])
    # best 0.5; 0.6 best; 0.6 bad 1; 0.55 bad 2 > 1 -> x0.5; 0.7 best; 0.7 bad 1; 0.7 bad 2 -> x0.5; 0.8 best
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]

    reference_optimizer = make_optimizer((1.0,))
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(
        reference_optimizer, mode="max", factor=0.5, patience=1, threshold=0.0
    )
    expected = []
    for metric in metrics:
        reference.step(metric)
        expected.append(reference_optimizer.param_groups[0]["lr"])
    assert seen == expected


def test_plateau_ignores_epochs_without_validation_and_respects_warmup_and_floor() -> None:
    schedule = LRSchedule(
        make_optimizer((1.0,)),
        "plateau",
        epochs=10,
        iters_per_epoch=2,
        gamma=0.1,
        patience=0,
        warmup_epochs=1,
        warmup_start_factor=0.5,
        min_lr_ratio=0.05,
    )
    assert schedule.last_lrs == [0.5]
    schedule.step_epoch(0.3)  # first metric: best
    schedule.step_epoch(None)  # not validated: no change
    schedule.step_epoch(0.2)  # bad 1 > 0 -> x0.1
    assert schedule.last_lrs == pytest.approx([0.05])  # 0.5 (warm-up) * 0.1
    schedule.step_iteration()
    schedule.step_iteration()
    assert schedule.last_lrs == pytest.approx([0.1])
    schedule.step_epoch(0.1)  # 0.1 * 0.1 = 0.01 is below the floor 0.05
    assert schedule.last_lrs == pytest.approx([0.05])


def test_none_is_constant_after_warmup() -> None:
    schedule = LRSchedule(make_optimizer((0.2,)), "none", epochs=2, iters_per_epoch=2, warmup_epochs=1)
    assert [lrs[0] for lrs in run(schedule, 4)] == pytest.approx([0.02, 0.11, 0.2, 0.2], abs=1e-12)


def test_warmup_longer_than_training_is_clamped() -> None:
    schedule = LRSchedule(make_optimizer((1.0,)), "cosine", epochs=1, iters_per_epoch=2, warmup_epochs=3)
    assert [lrs[0] for lrs in run(schedule, 2)] == pytest.approx([0.1, 0.55], abs=1e-12)


@pytest.mark.parametrize("name", ["cosine", "multistep", "plateau", "none"])
def test_state_round_trip_continues_the_same_sequence(name: str) -> None:
    kwargs = dict(epochs=5, iters_per_epoch=3, milestones=(2, 4), gamma=0.5, warmup_epochs=1, patience=0)
    metrics = [0.4, 0.3, 0.5, 0.5, 0.2]

    def epoch(schedule: LRSchedule, e: int, seen: list[list[float]]) -> None:
        seen.extend(run(schedule, 3))
        schedule.step_epoch(metrics[e])

    straight: list[list[float]] = []
    first = LRSchedule(make_optimizer(), name, **kwargs)
    for e in range(5):
        epoch(first, e, straight)

    resumed: list[list[float]] = []
    before = LRSchedule(make_optimizer(), name, **kwargs)
    for e in range(2):
        epoch(before, e, resumed)
    state = before.state_dict()
    after = LRSchedule(make_optimizer((7.0, 7.0)), name, **kwargs)  # base rates come from the state
    after.load_state_dict(state)
    assert after.last_lrs == before.last_lrs
    for e in range(2, 5):
        epoch(after, e, resumed)
    assert resumed == straight


def test_build_scheduler_reads_the_train_config() -> None:
    cfg = load_config(
        None,
        ["train.epochs=4", "train.scheduler.name=multistep", "train.scheduler.milestones=[1]", "train.scheduler.warmup_epochs=0"],
    )
    schedule = build_scheduler(make_optimizer((1.0,)), cfg.train, iters_per_epoch=1)
    assert [lrs[0] for lrs in run(schedule, 3)] == pytest.approx([1.0, 0.1, 0.1])
