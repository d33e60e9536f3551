"""Which device a run uses."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"`` -> device; ValueError for CUDA without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if name not in ("cuda", "cpu"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)
