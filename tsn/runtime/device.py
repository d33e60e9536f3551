"""Which device a run uses."""

from __future__ import annotations

import torch

from tsn.errors import UserError


class DeviceUnavailable(UserError, ValueError):
    """The device asked for is not one this process can use (``--device cuda`` without a GPU, an unknown name)."""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"`` -> device; ``DeviceUnavailable`` for CUDA without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("--device cuda: no CUDA device is available")
    if name not in ("cuda", "cpu"):
        raise DeviceUnavailable(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)
