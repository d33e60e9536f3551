"""The temporal shift module (TSM; Lin, Gan and Han, ICCV 2019): a 2D backbone that sees its neighbours in time.

The backbone runs on ``(N * T, C, H, W)``: the T segment inputs of each of N clips, clip-major
(``tsn.layout``). In every residual block, the input of the residual branch's first convolution is shifted
in time before that convolution (the paper's "residual shift"): a fraction ``1 / shift_div`` of its
channels comes from the next segment and another from the previous one (``bidirectional``), or one
fraction from the previous segment only (``causal``, the online model: it can run one frame at a time).
Segments past either end of a clip give zeros; the shift never crosses from one clip (or view) of the
batch into the next. It adds no parameter and no multiply: the state dict keeps the keys of the plain
backbone, so ImageNet or TSN weights load unchanged.

Channel order, as mmaction2's and the TSM repository's models (so their checkpoints mean the same):
``bidirectional``: channels ``[0, f)`` from t + 1, ``[f, 2f)`` from t - 1, the rest unchanged;
``causal``: channels ``[0, f)`` from t - 1, the rest unchanged; ``f = C // shift_div`` (0: nothing moves).

Where: torchvision's ResNet blocks (every ``BasicBlock``/``Bottleneck``), MobileNetV3's inverted residuals
with a residual connection, EfficientNet-Lite0's, Lite1's and Lite2's MBConv blocks with a residual connection.
VGG and BN-Inception have no residual blocks and timm models are not known here: ``add_temporal_shift``
refuses them.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from tsn.models.efficientnet_lite import MBConv

TEMPORAL = ("none", "tsm")
SHIFT_DIRECTIONS = ("bidirectional", "causal")


class NoResidualBlocks(ValueError):
    """The backbone has no residual block to put the temporal shift in."""


def temporal_shift(x: torch.Tensor, segments: int, shift_div: int, direction: str) -> torch.Tensor:
    """``(N * T, C, H, W)`` -> the same shape with channels moved in time within each clip of T = ``segments``
    (module docstring). The memory format is kept (a channels-last input gives a channels-last output)."""
    frames, channels = x.shape[:2]
    if frames % segments != 0:
        raise ValueError(f"temporal shift: {frames} inputs are not whole clips of {segments} segments")
    fold = channels // shift_div
    if fold == 0:
        return x
    rows = torch.arange(frames, device=x.device)
    position = rows % segments  # (N*T,) each input's segment within its clip
    has_past = (position > 0).view(-1, 1, 1, 1)
    has_future = (position < segments - 1).view(-1, 1, 1, 1)
    past_rows = torch.where(position > 0, rows - 1, rows)  # a clip's first segment: itself, zeroed below
    future_rows = torch.where(position < segments - 1, rows + 1, rows)
    zero = x.new_zeros(())
    if direction == "causal":
        parts = [torch.where(has_past, x[:, :fold].index_select(0, past_rows), zero), x[:, fold:]]
    else:
        parts = [torch.where(has_future, x[:, :fold].index_select(0, future_rows), zero),
                 torch.where(has_past, x[:, fold:2 * fold].index_select(0, past_rows), zero), x[:, 2 * fold:]]
    shifted = torch.cat(parts, dim=1)  # (N*T, C, H, W)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return shifted.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class ShiftedConv2d(nn.Conv2d):
    """A ``Conv2d`` whose input is first shifted in time (``temporal_shift``); its parameters and state-dict keys
    are the convolution's own."""

    segments: int
    shift_div: int
    direction: str
    # Set only while streaming (``tsn.apps.stream``): the channels the previous frame passes on, replaced by
    # this frame's on every call; the input is then one frame per stream, not whole clips.
    stream_cache: torch.Tensor | None = None

    @classmethod
    def replacing(cls, conv: nn.Conv2d, segments: int, shift_div: int, direction: str) -> ShiftedConv2d:
        """A shifted convolution computing with ``conv``'s very parameters (the same tensors)."""
        if type(conv) is not nn.Conv2d:
            raise ValueError(f"temporal shift: cannot shift a {type(conv).__name__}, only a plain Conv2d")
        shifted = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                      device="meta")  # no memory for weights that are replaced next
        shifted.weight = conv.weight
        shifted.bias = conv.bias
        shifted.segments, shifted.shift_div, shifted.direction = segments, shift_div, direction
        return shifted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stream_cache is None:
            return super().forward(temporal_shift(x, self.segments, self.shift_div, self.direction))
        fold = x.shape[1] // self.shift_div  # causal, one frame: channels [0, fold) come from the previous frame
        # a copy: a view would keep the whole input alive between frames
        previous, self.stream_cache = self.stream_cache, x[:, :fold].clone()
        return super().forward(torch.cat([previous, x[:, fold:]], dim=1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shift 1/{self.shift_div} {self.direction} over {self.segments} segments"


def _residual_branch_entry(block: nn.Module) -> tuple[nn.Module, str] | None:
    """(parent, attribute) of the first convolution of ``block``'s residual branch; None for a block without a
    residual connection (or not a residual block)."""
    if isinstance(block, (BasicBlock, Bottleneck)):
        return block, "conv1"
    if isinstance(block, InvertedResidual) and block.use_res_connect:
        return block.block[0], "0"  # Conv2dNormActivation: (conv, norm, activation)
    if isinstance(block, MBConv) and block.residual:
        first = block.expand if not isinstance(block.expand, nn.Identity) else block.depthwise
        return first, "conv"
    return None


def add_temporal_shift(backbone: nn.Module, segments: int, shift_div: int, direction: str, name: str) -> int:
    """Replace the first convolution of every residual branch of ``backbone`` (called ``name`` in errors) by a
    ``ShiftedConv2d``; returns how many. A backbone without residual blocks is a ValueError."""
    if direction not in SHIFT_DIRECTIONS:
        raise ValueError(f"shift direction must be one of {SHIFT_DIRECTIONS}, got {direction!r}")
    if shift_div < 2 or segments < 1:
        raise ValueError(f"shift_div must be >= 2 (a fraction each way) and segments >= 1, got {shift_div} and "
                         f"{segments}")
    entries = [entry for entry in map(_residual_branch_entry, backbone.modules()) if entry is not None]
    if not entries:
        raise NoResidualBlocks(f"tsm shifts channels inside residual blocks, and backbone {name!r} has none: use "
                               f"a ResNet, mobilenet_v3_large or efficientnet_lite0/1/2")
    for parent, attribute in entries:
        conv = getattr(parent, attribute)
        setattr(parent, attribute, ShiftedConv2d.replacing(conv, segments, shift_div, direction))
    return len(entries)


def shifted_convs(module: nn.Module) -> list[ShiftedConv2d]:
    """Every ``ShiftedConv2d`` inside ``module``, in registration order."""
    return [m for m in module.modules() if isinstance(m, ShiftedConv2d)]
