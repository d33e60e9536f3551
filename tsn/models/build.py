"""``build_model``: a TSN from plain arguments (the config-reading builder sits on top of it).

Its defaults are the config's (``tsn.config``) for what the network is (backbone, head, segments, consensus,
dropout, ...), so that a model built in code computes what an empty config's does (``new_length`` is the RGB
one: pass it for flow and RGB difference); the BatchNorm controls of fine-tuning (``partial_bn``, ``freeze_bn``,
``fixed_head_statistics``) are off unless asked for: every BatchNorm of a model built in code trains, as in
plain PyTorch.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from tsn.config import DEFAULT_NEW_LENGTH, DataConfig, ModelConfig
from tsn.models.backbones import build_backbone
from tsn.models.finetune import freeze_backbone as _freeze_backbone
from tsn.models.finetune import freeze_stages
from tsn.models.heads import BilinearHead, GAPHead
from tsn.models.modality import FLOW_MEAN, FLOW_STD, cross_modality_init, input_channels
from tsn.models.spec import IMAGENET_STD, BackboneSpec
from tsn.models.temporal import TEMPORAL, add_temporal_shift
from tsn.models.tsn import TSN
from tsn.models.weights import read_weights_file, resolve_weights_file
from tsn.models.zoo import (
    PRETRAINED_FORMATS,
    ZOO_FORMATS,
    ZooWeights,
    load_zoo_weights,
    to_tsn_names,
    zoo_format,
)

HEAD_TYPES = ("gap", "bilinear")


def build_model(
    *,
    backbone: str = ModelConfig.backbone,
    pretrained: bool | str | os.PathLike = ModelConfig.pretrained,
    head: str = ModelConfig.head,
    num_classes: int,
    num_segments: int = DataConfig.num_segments,
    consensus: str = ModelConfig.consensus,
    dropout: float = ModelConfig.dropout,
    partial_bn: bool = False,
    freeze_bn: bool = False,
    freeze_backbone: bool = ModelConfig.freeze_backbone,
    frozen_stages: int = ModelConfig.frozen_stages,
    bilinear_dim: int | None = ModelConfig.bilinear_dim,
    modality: str = DataConfig.modality,
    new_length: int = DEFAULT_NEW_LENGTH[DataConfig.modality],
    fixed_head_statistics: bool = False,
    temporal: str = ModelConfig.temporal,
    shift_div: int = ModelConfig.shift_div,
    shift_direction: str = ModelConfig.shift_direction,
    pretrained_format: str = ModelConfig.pretrained_format,
) -> TSN:
    """A TSN: ``build_backbone(backbone, pretrained)``, a "gap" or "bilinear" head (the bilinear
    one reduces the features to ``bilinear_dim`` channels first; None keeps all), the consensus,
    partial BN and, with ``freeze_backbone``, only the head trainable, or with ``frozen_stages`` the
    backbone's first stages frozen (``tsn.models.finetune.freeze_stages``). ``modality`` "flow" or
    "rgbdiff" with ``new_length`` L: the first convolution takes 2 L or 3 L channels, initialised from
    the RGB weights (``tsn.models.modality.cross_modality_init``). ``fixed_head_statistics``: the head's
    BatchNorm (the bilinear reduction's) keeps its running statistics in training (see ``TSN``). ``temporal``
    "tsm": the temporal shift module in the backbone's residual blocks, ``1 / shift_div`` of the channels
    shifted ``shift_direction`` ("bidirectional" or "causal"; ``tsn.models.temporal``). ``pretrained_format``: a
    ``pretrained`` file's layout: "torchvision" (the backbone's own), a model zoo's ("mmaction2", "tsm", "tsn_pytorch":
    a ResNet TSN or TSM, its classifier too when of ``num_classes``; ``tsn.models.zoo``) or "auto" (detected)."""
    if head not in HEAD_TYPES:
        raise ValueError(f"head {head!r} is not one of {', '.join(HEAD_TYPES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    zoo = _zoo_weights(pretrained, pretrained_format)
    net, spec = build_backbone(backbone, False if zoo is not None else pretrained)
    channels = input_channels(modality, new_length)
    if modality != "rgb":
        cross_modality_init(net, channels)
    if temporal not in TEMPORAL:
        raise ValueError(f"temporal {temporal!r} is not one of {', '.join(TEMPORAL)}")
    if temporal == "tsm":
        add_temporal_shift(net, num_segments, shift_div, shift_direction, backbone)
    if modality == "flow":
        spec = _flow_spec(spec)
    head_module = (GAPHead(spec.feature_dim, num_classes, dropout) if head == "gap" else
                   BilinearHead(spec.feature_dim, num_classes, dropout, reduce_dim=bilinear_dim))
    model = TSN(net, spec, head_module, num_segments, consensus=consensus, partial_bn=partial_bn,
                freeze_bn=freeze_bn, modality=modality, fixed_head_statistics=fixed_head_statistics)
    if zoo is not None:
        load_zoo_weights(model, zoo, str(pretrained))
    if freeze_backbone:
        _freeze_backbone(model)
    elif frozen_stages:
        freeze_stages(model, frozen_stages)
    return model


def _flow_spec(spec: BackboneSpec) -> BackboneSpec:
    """``spec`` with the flow statistics, at the magnitude this backbone's RGB input has (BN-Inception takes
    0..255-scale pixels)."""
    std = FLOW_STD * (sum(spec.std) / len(spec.std)) / (sum(IMAGENET_STD) / len(IMAGENET_STD))
    return replace(spec, mean=(FLOW_MEAN, FLOW_MEAN), std=(std, std))


def _zoo_weights(pretrained: bool | str | os.PathLike, pretrained_format: str) -> ZooWeights | None:
    """The zoo checkpoint that ``pretrained`` names, in this project's names; None for the backbone's own file."""
    if pretrained_format not in PRETRAINED_FORMATS:
        raise ValueError(f"pretrained_format {pretrained_format!r} is not one of {', '.join(PRETRAINED_FORMATS)}")
    if pretrained is True and pretrained_format in ZOO_FORMATS:
        raise ValueError(f"pretrained_format {pretrained_format!r} names the layout of a file: pass its path as "
                         f"pretrained")
    if isinstance(pretrained, bool) or pretrained_format == "torchvision":
        return None
    path = resolve_weights_file("model.pretrained", Path(pretrained))
    state, meta = read_weights_file(path)
    fmt = zoo_format(state) if pretrained_format == "auto" else pretrained_format
    return None if fmt is None else to_tsn_names(state, fmt, str(path), meta)
