"""A Keras-like layer table: name, type, output shape and parameters of every leaf module."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerRow:
    """One call of a leaf module. ``params`` counts its own parameters on its first call and 0
    on later calls (a module used twice, like a shared ReLU, is listed twice, counted once)."""

    name: str
    type: str
    output_shape: str
    params: int


@dataclass(frozen=True)
class ModelSummary:
    """Rows in call order and totals over ``model.parameters()`` and ``model.buffers()``."""

    rows: tuple[LayerRow, ...]
    input_shape: tuple[int, ...]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    buffer_elements: int

    def format(self) -> str:
        """The table as text, totals below it."""
        header = ("Layer (type)", "Output shape", "Param #")
        cells = [(f"{r.name} ({r.type})", r.output_shape, f"{r.params:,}") for r in self.rows]
        widths = [max(len(row[i]) for row in [header, *cells]) for i in range(3)]

        def line(c: tuple[str, str, str]) -> str:
            return f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]:>{widths[2]}}"

        rule = "=" * (sum(widths) + 4)
        return "\n".join(
            [
                line(header),
                rule,
                *(line(c) for c in cells),
                rule,
                f"Input shape: {list(self.input_shape)}",
                f"Total params: {self.total_params:,}",
                f"Trainable params: {self.trainable_params:,}",
                f"Non-trainable params: {self.non_trainable_params:,}",
                f"Buffers (BatchNorm statistics etc.): {self.buffer_elements:,}",
            ]
        )


def _shape_of(output: object) -> str:
    if isinstance(output, torch.Tensor):
        return str(list(output.shape))
    if isinstance(output, (tuple, list)):
        return ", ".join(_shape_of(o) for o in output)
    return type(output).__name__


def summarize(model: nn.Module, example_input: torch.Tensor) -> ModelSummary:
    """Run ``model(example_input)`` once (eval mode, no grad; the mode is restored) and record
    every leaf module's output shape and parameters."""
    rows: list[LayerRow] = []
    counted: set[str] = set()

    def record(name: str):
        def hook(module: nn.Module, _inputs: tuple, output: object) -> None:
            params = 0 if name in counted else sum(p.numel() for p in module.parameters())
            counted.add(name)
            rows.append(LayerRow(name, type(module).__name__, _shape_of(output), params))

        return hook

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    handles = [m.register_forward_hook(record(n)) for n, m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSummary(
        rows=tuple(rows),
        input_shape=tuple(example_input.shape),
        total_params=total,
        trainable_params=trainable,
        non_trainable_params=total - trainable,
        buffer_elements=sum(b.numel() for b in model.buffers()),
    )
