"""Outputs of several named layers in one forward pass, via forward hooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class FeatureExtractor:
    """``FeatureExtractor(model, ["layer3", "layer4"])(x) -> {"layer3": tensor, "layer4": tensor}``.

    ``model`` is any module (a backbone, a TSN: then names like ``backbone.layer4`` or ``head``
    and inputs ``(B, T, C, H, W)``); names are those of ``model.named_modules()``. One call runs
    ``model(x)`` once in eval mode without gradients (the mode is restored afterwards) and
    returns each layer's output (for a module called several times, its last call). Hooks
    exist only during the call.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        unknown = [name for name in layers if name not in modules or name == ""]
        if unknown:
            some = ", ".join(list(modules)[1:13])
            raise ValueError(f"unknown layer name(s) {unknown} in {type(model).__name__} (names like: {some}, ...)")
        if not layers:
            raise ValueError("FeatureExtractor needs at least one layer name")
        self.model = model
        self.layers = tuple(layers)
        self._modules = {name: modules[name] for name in self.layers}

    def __call__(self, x: torch.Tensor) -> dict[str, Any]:
        outputs: dict[str, Any] = {}

        def keep(name: str):  # one hook per layer, closing over its name
            def hook(_module: nn.Module, _inputs: tuple, output: Any) -> None:
                outputs[name] = output

            return hook

        handles = [module.register_forward_hook(keep(name)) for name, module in self._modules.items()]
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                self.model(x)
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        missing = [name for name in self.layers if name not in outputs]
        if missing:
            raise ValueError(f"layer(s) {missing} were not run by {type(self.model).__name__}.forward")
        return {name: outputs[name] for name in self.layers}
