"""An exponential moving average of a model's weights, for evaluation and the saved checkpoints.

After every optimizer step the average moves towards the weights: ``avg = d * avg + (1 - d) * w``
with ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the warm-up of TensorFlow's
``ExponentialMovingAverage``, so that the first steps of a short run do not keep the average
near the initial weights). Floating-point buffers (BatchNorm statistics) are averaged the same
way, integer ones (``num_batches_tracked``) copied. Small data sets give noisy steps; the
average of the last few dozen is a better model than the last one.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """The average of ``model``'s weights in ``self.module`` (a copy, eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    def factor(self) -> float:
        """The weight ``d`` of the average in the next update."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights and buffers (same architecture)."""
        d = self.factor()
        current = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.is_floating_point():
                average.mul_(d).add_(value.to(average.dtype), alpha=1.0 - d)
            else:
                average.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
