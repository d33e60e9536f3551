"""Learning-rate schedule: linear warm-up composed with multistep, cosine, plateau or constant.

Every parameter group keeps its own base learning rate (the backbone's ``lr * backbone_lr_mult``
and the head's ``lr``) and gets ``base * factor``; the factor is a pure function of the global
iteration count (plus, for ``plateau``, a multiplier that the validation metric drives), so a
resumed run recomputes exactly the same learning rates.

With ``ipe`` iterations per epoch, ``N = epochs * ipe`` iterations in all and
``W = min(warmup_epochs * ipe, N)`` warm-up iterations, iteration ``i`` (0-based) uses

- warm-up ``w(i) = s + (1 - s) * i / W`` for ``i < W``, then 1 (``s = warmup_start_factor``).
  Stepped every iteration, not every epoch: with one warm-up epoch of a few dozen iterations
  an epoch-wise step would jump from ``s`` straight to 1.
- ``cosine``: 1 during warm-up, then ``r + (1 - r) * (1 + cos(pi * (i - W) / (N - W))) / 2``
  with ``r = min_lr_ratio``, i.e. a cosine from the full rate at the end of the warm-up down to
  ``r`` after the last iteration.
- ``multistep``: ``w(i) * gamma ** (number of milestones <= i // ipe)``; milestones count epochs
  from the start of training.
- ``plateau``: ``w(i) * p`` where ``p`` starts at 1 and becomes ``max(p * gamma, r)`` when the
  validation metric (higher is better) has not improved on its best for more than
  ``patience`` validations in a row (like ``ReduceLROnPlateau(mode="max", threshold=0)``).
- ``none``: ``w(i)``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch

from tsn.config import TrainConfig

ScheduleName = Literal["multistep", "cosine", "plateau", "none"]


class LRSchedule:
    """Sets the learning rate of every parameter group of ``optimizer``; see the module docstring.

    Call ``step_iteration()`` after every optimizer step and ``step_epoch(metric)`` after every
    epoch (``metric``: validation top-1 when the epoch was validated, else None). The rates for
    iteration 0 are set on construction. ``state_dict``/``load_state_dict`` restore it exactly.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: ScheduleName,
        epochs: int,
        iters_per_epoch: int,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_epochs: int = 0,
        warmup_start_factor: float = 0.1,
        min_lr_ratio: float = 0.0,
        patience: int = 2,
    ) -> None:
        if name not in ("multistep", "cosine", "plateau", "none"):
            raise ValueError(f"unknown schedule {name!r}; expected multistep, cosine, plateau or none")
        if epochs < 1 or iters_per_epoch < 1:
            raise ValueError(f"epochs and iters_per_epoch must be >= 1, got {epochs} and {iters_per_epoch}")
        self.optimizer = optimizer
        self.name = name
        self.iters_per_epoch = iters_per_epoch
        self.total_iters = epochs * iters_per_epoch
        self.warmup_iters = min(warmup_epochs * iters_per_epoch, self.total_iters)
        self.milestones = tuple(milestones)
        self.gamma = gamma
        self.warmup_start_factor = warmup_start_factor
        self.min_lr_ratio = min_lr_ratio
        self.patience = patience
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        # The state that changes while training (all of it goes into state_dict).
        self.iteration = 0
        self.plateau_scale = 1.0
        self.best_metric: float | None = None
        self.num_bad_epochs = 0
        self._apply()

    def factor(self, iteration: int) -> float:
        """Multiplier of the base rates at ``iteration`` (plateau reductions included)."""
        warmup = 1.0
        if iteration < self.warmup_iters:
            warmup = self.warmup_start_factor + (1.0 - self.warmup_start_factor) * iteration / self.warmup_iters
        if self.name == "cosine":
            span = self.total_iters - self.warmup_iters
            if iteration < self.warmup_iters or span <= 0:
                return warmup
            progress = min((iteration - self.warmup_iters) / span, 1.0)
            return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.name == "multistep":
            epoch = iteration // self.iters_per_epoch
            passed = sum(1 for milestone in self.milestones if milestone <= epoch)
            return warmup * self.gamma**passed
        if self.name == "plateau":
            return warmup * self.plateau_scale
        return warmup

    def step_iteration(self) -> None:
        """After an optimizer step: set the rates of the next iteration."""
        self.iteration += 1
        self._apply()

    def step_epoch(self, metric: float | None = None) -> None:
        """After an epoch: ``plateau`` compares ``metric`` (higher is better) with its best.

        Other schedules ignore it; so does ``plateau`` when ``metric`` is None (no validation).
        """
        if self.name != "plateau" or metric is None:
            return
        if self.best_metric is None or metric > self.best_metric:
            self.best_metric = float(metric)
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            self.plateau_scale = max(self.plateau_scale * self.gamma, self.min_lr_ratio)
            self.num_bad_epochs = 0
        self._apply()

    @property
    def last_lrs(self) -> list[float]:
        """Current learning rate of each parameter group."""
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (safe for ``torch.load(weights_only=True)``)."""
        return {
            "iteration": self.iteration,
            "plateau_scale": self.plateau_scale,
            "best_metric": self.best_metric,
            "num_bad_epochs": self.num_bad_epochs,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output and set the optimizer's rates for the saved iteration.

        The base rates come from the checkpoint, so a resumed run continues the same schedule.
        """
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"scheduler state has {len(state['base_lrs'])} parameter groups, "
                f"the optimizer {len(self.optimizer.param_groups)}"
            )
        self.iteration = int(state["iteration"])
        self.plateau_scale = float(state["plateau_scale"])
        self.best_metric = None if state["best_metric"] is None else float(state["best_metric"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        self._apply()

    def _apply(self) -> None:
        factor = self.factor(self.iteration)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, iters_per_epoch: int) -> LRSchedule:
    """The schedule that ``train`` (``train.epochs`` and ``train.scheduler``) describes."""
    sched = train.scheduler
    return LRSchedule(
        optimizer,
        name=sched.name,
        epochs=train.epochs,
        iters_per_epoch=iters_per_epoch,
        milestones=sched.milestones,
        gamma=sched.gamma,
        warmup_epochs=sched.warmup_epochs,
        warmup_start_factor=sched.warmup_start_factor,
        min_lr_ratio=sched.min_lr_ratio,
        patience=sched.patience,
    )
