"""BN-Inception (Inception v2 of Ioffe & Szegedy 2015), the backbone of the original TSN.

Written for this project; the layer names, channel counts, kernel sizes, strides and pooling
follow the Caffe model that TSN used, as ported to PyTorch in Cadene's ``pretrainedmodels``
(``bn_inception-52deb4733.pth``, later re-exported as ``bn_inception-239d2248.pth``). That
checkpoint expects **BGR** images in the **0..255** range minus the mean ``[104, 117, 128]``
(B, G, R) with std 1. We keep one convention for every backbone (RGB, normalised with the spec's
mean and std on the 0..1 scale), so the mapping is exact and costs nothing at run time:

* ``spec.mean = (128, 117, 104) / 255`` (RGB order) and ``spec.std = (1/255,) * 3``, so
  ``normalize_clips`` yields ``x - mean`` in 0..255 units, as Caffe did;
* the loader reverses the input channels of the first convolution's weights (BGR -> RGB), so
  the model takes RGB like every other backbone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from tsn.models.weights import read_state_dict

# 224 x 224 input -> 1024 x 7 x 7
FEATURE_DIM = 1024
CHECKPOINT_FILE_NAME = "bn_inception-52deb4733.pth"
CHECKPOINT_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
# Caffe mean in BGR order, 0..255
CAFFE_MEAN_BGR: tuple[int, int, int] = (104, 117, 128)


class ConvBNReLU(nn.Module):
    """conv (with bias, as in Caffe) -> BatchNorm (eps 1e-5) -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-5)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
    """Four branches concatenated, spatial size kept:
    1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | 3x3 pool (avg or max) -> 1x1."""

    def __init__(
        self,
        in_ch: int,
        c1x1: int,
        c3x3_reduce: int,
        c3x3: int,
        double_reduce: int,
        double: int,
        pool_proj: int,
        pool: str,
    ) -> None:
        super().__init__()
        self.b1x1 = ConvBNReLU(in_ch, c1x1, 1)
        self.b3x3_reduce = ConvBNReLU(in_ch, c3x3_reduce, 1)
        self.b3x3 = ConvBNReLU(c3x3_reduce, c3x3, 3)
        self.double_3x3_reduce = ConvBNReLU(in_ch, double_reduce, 1)
        self.double_3x3_1 = ConvBNReLU(double_reduce, double, 3)
        self.double_3x3_2 = ConvBNReLU(double, double, 3)
        if pool == "avg":
            self.pool: nn.Module = nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        else:
            self.pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        self.pool_proj = ConvBNReLU(in_ch, pool_proj, 1)
        self.out_channels = c1x1 + c3x3 + double + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.b1x1(x),
                self.b3x3(self.b3x3_reduce(x)),
                self.double_3x3_2(self.double_3x3_1(self.double_3x3_reduce(x))),
                self.pool_proj(self.pool(x)),
            ],
            dim=1,
        )


class InceptionReduction(nn.Module):
    """Halves the spatial size: 1x1 -> 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | 3x3/2 max pool (passes the input channels)."""

    def __init__(self, in_ch: int, c3x3_reduce: int, c3x3: int, double_reduce: int, double: int) -> None:
        super().__init__()
        self.b3x3_reduce = ConvBNReLU(in_ch, c3x3_reduce, 1)
        self.b3x3 = ConvBNReLU(c3x3_reduce, c3x3, 3, stride=2)
        self.double_3x3_reduce = ConvBNReLU(in_ch, double_reduce, 1)
        self.double_3x3_1 = ConvBNReLU(double_reduce, double, 3)
        self.double_3x3_2 = ConvBNReLU(double, double, 3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.out_channels = c3x3 + double + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.b3x3(self.b3x3_reduce(x)),
                self.double_3x3_2(self.double_3x3_1(self.double_3x3_reduce(x))),
                self.pool(x),
            ],
            dim=1,
        )


class BNInception(nn.Module):
    """Backbone: RGB (N, 3, H, W) -> (N, 1024, H/32, W/32) (no pooling, no classifier).

    Modules: ``stem`` (conv1 7x7/2, pool1, conv2_reduce 1x1, conv2 3x3, pool2: /8, 192 channels),
    ``inception_3a`` .. ``inception_5b``; 3c and 4e halve the size.
    """

    feature_dim = FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential()
        self.stem.add_module("conv1", ConvBNReLU(3, 64, 7, stride=2))
        self.stem.add_module("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True))
        self.stem.add_module("conv2_reduce", ConvBNReLU(64, 64, 1))
        self.stem.add_module("conv2", ConvBNReLU(64, 192, 3))
        self.stem.add_module("pool2", nn.MaxPool2d(3, stride=2, ceil_mode=True))
        self.inception_3a = InceptionBlock(192, 64, 64, 64, 64, 96, 32, "avg")  # -> 256
        self.inception_3b = InceptionBlock(256, 64, 64, 96, 64, 96, 64, "avg")  # -> 320
        self.inception_3c = InceptionReduction(320, 128, 160, 64, 96)  # -> 576, /16
        self.inception_4a = InceptionBlock(576, 224, 64, 96, 96, 128, 128, "avg")  # -> 576
        self.inception_4b = InceptionBlock(576, 192, 96, 128, 96, 128, 128, "avg")  # -> 576
        self.inception_4c = InceptionBlock(576, 160, 128, 160, 128, 160, 128, "avg")  # -> 608
        self.inception_4d = InceptionBlock(608, 96, 128, 192, 160, 192, 128, "avg")  # -> 608
        self.inception_4e = InceptionReduction(608, 128, 192, 192, 256)  # -> 1056, /32
        self.inception_5a = InceptionBlock(1056, 352, 192, 320, 160, 224, 128, "avg")  # -> 1024
        self.inception_5b = InceptionBlock(1024, 352, 192, 320, 192, 224, 128, "max")  # -> 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in ("3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
            x = getattr(self, f"inception_{name}")(x)
        return x


# Caffe layer names -> ours
_STEM_LAYERS = {"conv1_7x7_s2": "stem.conv1", "conv2_3x3_reduce": "stem.conv2_reduce", "conv2_3x3": "stem.conv2"}
_BLOCK_LAYERS = {
    "1x1": "b1x1",
    "3x3_reduce": "b3x3_reduce",
    "3x3": "b3x3",
    "double_3x3_reduce": "double_3x3_reduce",
    "double_3x3_1": "double_3x3_1",
    "double_3x3_2": "double_3x3_2",
    "pool_proj": "pool_proj",
}
_CLASSIFIER_LAYERS = ("last_linear", "fc")
_BLOCK_NAME_LEN = len("inception_3a")


def convert_caffe_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cadene/TSN BN-Inception keys -> ``BNInception`` keys, ready for RGB input.

    ``inception_3a_double_3x3_1_bn.running_var`` -> ``inception_3a.double_3x3_1.bn.running_var``,
    ``conv1_7x7_s2.weight`` -> ``stem.conv1.conv.weight`` with its input channels reversed
    (BGR -> RGB). BatchNorm tensors stored as ``(1, C)`` (as in some ports) become ``(C,)``.
    The classifier (``last_linear``/``fc``) is dropped. An unknown key raises ``ValueError``.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        layer, _, param = key.rpartition(".")
        if layer in _CLASSIFIER_LAYERS:
            continue
        is_bn = layer.endswith("_bn")
        base = layer[: -len("_bn")] if is_bn else layer
        if base in _STEM_LAYERS:
            ours = _STEM_LAYERS[base]
        elif base.startswith("inception_") and base[_BLOCK_NAME_LEN + 1:] in _BLOCK_LAYERS:
            # "inception_3a_double_3x3_1": block "inception_3a", branch "double_3x3_1"
            block, branch = base[:_BLOCK_NAME_LEN], base[_BLOCK_NAME_LEN + 1:]
            ours = f"{block}.{_BLOCK_LAYERS[branch]}"
        else:
            raise ValueError(f"unknown BN-Inception checkpoint key {key!r}")
        if is_bn and value.dim() == 2 and value.shape[0] == 1:
            value = value[0]  # (1, C) -> (C,)
        if layer == "conv1_7x7_s2" and param == "weight":
            value = value.flip(1)  # Caffe's first conv reads BGR; ours reads RGB
        converted[f"{ours}.{'bn' if is_bn else 'conv'}.{param}"] = value
    return converted


def load_bninception_weights(model: BNInception, source: str | os.PathLike) -> None:
    """Load a Cadene/TSN BN-Inception checkpoint file into ``model`` (strict, classifier dropped)."""
    state = read_state_dict(source)
    try:
        model.load_state_dict(convert_caffe_state_dict(state), strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{source}: does not fit BN-Inception: {' '.join(str(exc).split())}") from exc
