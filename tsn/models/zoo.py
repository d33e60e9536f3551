"""Model-zoo checkpoints of other TSN codebases, mapped onto this project's ResNet TSN (GAP head).

The layouts, key names as each codebase's source builds them:

* ``mmaction2`` (1.x; the file is ``{"meta": ..., "state_dict": ...}``): ``backbone.*`` is mmcv's ResNet, where
  a convolution and its BatchNorm form one ``ConvModule``: ``conv1.conv`` / ``conv1.bn`` (the stem),
  ``layerX.Y.convN.conv`` / ``layerX.Y.convN.bn``, ``layerX.Y.downsample.conv`` / ``.bn``; TSM's ``ResNetTSM``
  wraps a shifted convolution, ``layerX.Y.conv1.conv.net``; the classifier is ``cls_head.fc_cls``.
* ``tsm`` (mit-han-lab/temporal-shift-module) and ``tsn_pytorch`` (yjxiong/tsn-pytorch): ``module.base_model.*``
  is torchvision's ResNet (TSM's shifted convolution: ``layerX.Y.conv1.net``); the classifier is
  ``module.new_fc``, or ``module.base_model.fc`` for a model trained with dropout 0.

Both temporal shifts are this project's (``tsn.models.temporal``): channels ``[0, C // shift_div)`` come from
segment t + 1, the next ``C // shift_div`` from t - 1, zeros past either end of a clip, on the input of the
first convolution of a residual block ("blockres", inside the residual branch). Which blocks a file shifts is
read from its keys and must be the model's: the ResNet-101 TSMs of both shift every other block only, which
this project does not build, so they are refused. ``shift_div`` is not in the weights: an mmaction2 file's saved
config (``meta["cfg"]``) says it, and another than the model's is refused (as is temporal pooling); the TSM
repository's files say nothing (the published ones use 8, ``model.shift_div``'s default).

Both normalise as torchvision's ImageNet ResNets (mean 123.675, 116.28, 103.53, std 58.395, 57.12, 57.375 on
0..255), this project's ResNet spec. mmaction2's TSN averages the segments' pooled features before its linear
classifier and TSM averages the segment scores: both are ``model.consensus: avg``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from tsn.errors import UserError
from tsn.models.heads import GAPHead
from tsn.models.temporal import ShiftedConv2d
from tsn.models.tsn import TSN
from tsn.models.weights import MODULE_PREFIX

logger = logging.getLogger("tsn.models")

ZOO_FORMATS = ("mmaction2", "tsm", "tsn_pytorch")
PRETRAINED_FORMATS = ("auto", "torchvision", *ZOO_FORMATS)
_RESNETS = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}
_BATCH_COUNT = "num_batches_tracked"  # BatchNorm's step counter: older files lack it, and inference ignores it
_MM_BACKBONE = "backbone."
_MM_HEAD = {"cls_head.fc_cls.weight": "weight", "cls_head.fc_cls.bias": "bias"}
_MM_NORMALISATION = {"data_preprocessor.mean": "mean", "data_preprocessor.std": "std"}
_TSM_BODY = "base_model."
_TSM_HEAD = {"new_fc.weight": "weight", "new_fc.bias": "bias", "base_model.fc.weight": "weight",
             "base_model.fc.bias": "bias"}
_MM_CONV = re.compile(r"(?P<block>(?:layer\d+\.\d+\.)?)conv(?P<n>\d)\.(?P<part>conv|conv\.net|bn)")
_MM_DOWNSAMPLE = re.compile(r"(?P<block>layer\d+\.\d+\.)downsample\.(?P<part>conv|bn)")
_TSM_SHIFTED = re.compile(r"(?P<conv>layer\d+\.\d+\.conv1)\.net")


class ZooCheckpointError(UserError, ValueError):
    """A model-zoo checkpoint that is not one or does not fit the model; one line naming the file and the reason."""


@dataclass(frozen=True)
class ZooWeights:
    """A zoo checkpoint in this project's names. ``backbone``: keyed as torchvision's ResNet
    (``layer1.0.conv1.weight``); ``head``: the classifier as a ``GAPHead``'s ``fc`` (``weight``, ``bias``; empty
    when the file has none); ``shifted``: the convolutions the file shifts in time (``layer1.0.conv1``);
    ``foreign``: the file's keys that have no place in a ResNet TSN; ``origin``: a backbone key's name in the file;
    ``trained_with``: what the training config saved in an mmaction2 file says (``shift_div``, ``num_segments``,
    ``temporal_pool``; empty for the other codebases, whose files hold no config); ``normalisation``: the ``mean``
    and ``std`` (0..255) an mmaction2 file kept from its data preprocessor (its zoo's publishing drops them)."""

    format: str
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    shifted: frozenset[str]
    foreign: tuple[str, ...]
    origin: dict[str, str]
    trained_with: dict[str, int | bool] = field(default_factory=dict)
    normalisation: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        """Rows of the file's classifier; None without one."""
        return int(self.head["weight"].shape[0]) if "weight" in self.head else None


def zoo_format(keys: Iterable[str]) -> str | None:
    """The zoo layout that state-dict ``keys`` show (``mmaction2``, ``tsm`` when a convolution is shifted, else
    ``tsn_pytorch``), or None for any other file."""
    bare = [key.removeprefix(MODULE_PREFIX) for key in keys]
    # this project's own checkpoints have backbone.* keys too: mmaction2's also have its head or its conv modules
    if any(key.startswith(_MM_BACKBONE) for key in bare) and any(
            key in _MM_HEAD or key.startswith("backbone.conv1.conv.") for key in bare):
        return "mmaction2"
    if any(key.startswith(_TSM_BODY) for key in bare):
        return "tsm" if any(_TSM_SHIFTED.search(key) for key in bare) else "tsn_pytorch"
    return None


def _mmaction2_module(module: str) -> tuple[str, bool]:
    """An mmaction2 ResNet module name -> (torchvision's name, whether the convolution is shifted)."""
    conv = _MM_CONV.fullmatch(module)
    if conv is not None:
        kind = "bn" if conv["part"] == "bn" else "conv"
        return f"{conv['block']}{kind}{conv['n']}", conv["part"] == "conv.net"
    down = _MM_DOWNSAMPLE.fullmatch(module)
    if down is not None:
        return f"{down['block']}downsample.{0 if down['part'] == 'conv' else 1}", False
    return module, False


def _tsm_module(module: str) -> tuple[str, bool]:
    """A TSM-repository ResNet module name (torchvision's) -> (without the shift's ``.net``, whether shifted)."""
    shifted = _TSM_SHIFTED.fullmatch(module)
    return (shifted["conv"], True) if shifted is not None else (module, False)


def _trained_with(meta: Mapping[str, object]) -> dict[str, int | bool]:
    """The temporal settings in the config text mmengine saves as ``meta["cfg"]`` in mmaction2's files."""
    inner = meta.get("meta")
    text = inner.get("cfg") if isinstance(inner, Mapping) else None
    if not isinstance(text, str):
        return {}
    found: dict[str, int | bool] = {}
    for key in ("shift_div", "num_segments"):
        match = re.search(rf"\b{key}\s*=\s*(\d+)", text)
        if match is not None:
            found[key] = int(match[1])
    if re.search(r"\btemporal_pool\s*=\s*True", text):
        found["temporal_pool"] = True
    return found


def to_tsn_names(state: Mapping[str, torch.Tensor], fmt: str, label: str,
                 meta: Mapping[str, object] | None = None) -> ZooWeights:
    """``state`` of layout ``fmt`` (one of ``ZOO_FORMATS``) in this project's names, ``meta`` the file's other
    entries; a file of another layout is a ``ZooCheckpointError`` naming ``label``."""
    found = zoo_format(state)
    if fmt not in ZOO_FORMATS:
        raise ValueError(f"zoo format {fmt!r} is not one of {', '.join(ZOO_FORMATS)}")
    if found is None or (found == "mmaction2") != (fmt == "mmaction2"):
        first = next(iter(state), "none")
        raise ZooCheckpointError(f"{label}: not a {fmt} checkpoint ({'no tensors' if not state else 'first key'}: "
                                 f"{first}); model.pretrained_format: auto recognises the layout")
    body, head_keys, rename = (_MM_BACKBONE, _MM_HEAD, _mmaction2_module) if fmt == "mmaction2" else \
        (_TSM_BODY, _TSM_HEAD, _tsm_module)
    backbone: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    shifted: set[str] = set()
    foreign: list[str] = []
    normalisation: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        bare = key.removeprefix(MODULE_PREFIX)
        if fmt == "mmaction2" and bare in _MM_NORMALISATION:
            normalisation[_MM_NORMALISATION[bare]] = tensor
        elif bare in head_keys:
            head[head_keys[bare]] = tensor
        elif bare.startswith(body):
            module, _, param = bare[len(body):].rpartition(".")
            name, is_shifted = rename(module)
            new = f"{name}.{param}" if name else param
            backbone[new], origin[new] = tensor, key
            if is_shifted:
                shifted.add(name)
        else:
            foreign.append(key)
    return ZooWeights(fmt, backbone, head, frozenset(shifted), tuple(foreign), origin, _trained_with(meta or {}),
                      normalisation)


def resnet_name(keys: Iterable[str]) -> str | None:
    """The torchvision ResNet (``resnet18`` ... ``resnet152``) whose blocks backbone ``keys`` hold, or None."""
    keys = list(keys)
    blocks = tuple(len({key.split(".")[1] for key in keys if key.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = any(key.startswith("layer1.0.conv3.") for key in keys)
    return _RESNETS.get((bottleneck, blocks))


def _check_shift(model: TSN, weights: ZooWeights, label: str, whole_model: bool) -> None:
    """The file must shift the convolutions the model shifts; TSN weights may initialise a TSM to fine-tune."""
    convs = {name: m for name, m in model.backbone.named_modules() if isinstance(m, ShiftedConv2d)}
    own = frozenset(convs)
    settings = weights.trained_with
    if settings.get("temporal_pool"):
        raise ZooCheckpointError(f"{label}: trained with temporal pooling (temporal_pool=True), which this project "
                                 f"does not build")
    if weights.shifted and convs and settings.get("shift_div", 0) not in (0, next(iter(convs.values())).shift_div):
        raise ZooCheckpointError(f"{label}: trained with shift_div={settings['shift_div']}: set model.shift_div: "
                                 f"{settings['shift_div']}")
    if weights.shifted and whole_model and any(conv.direction != "bidirectional" for conv in convs.values()):
        raise ZooCheckpointError(f"{label}: its shift is bidirectional (as every zoo TSM), the model's is "
                                 f"model.shift_direction: causal")
    if settings.get("num_segments", model.num_segments) != model.num_segments:
        logger.info("%s: trained with %d segments, the model has %d", label, settings["num_segments"],
                    model.num_segments)
    if weights.shifted == own:
        return
    if not weights.shifted and not whole_model:
        logger.info("%s: TSN weights (no temporal shift) start a TSM model; the shift adds no weights", label)
        return
    if not own:
        raise ZooCheckpointError(f"{label}: a TSM checkpoint ({len(weights.shifted)} shifted convolutions, e.g. "
                                 f"{min(weights.shifted)}): set model.temporal: tsm")
    if not weights.shifted:
        raise ZooCheckpointError(f"{label}: a TSN checkpoint without temporal shift: set model.temporal: none")
    raise ZooCheckpointError(f"{label}: shifts the first convolution of {len(weights.shifted)} of the {len(own)} "
                             f"residual blocks (a ResNet-101 TSM shifts every other block), and this project "
                             f"shifts every one: it cannot run this file")


def _check_backbone(model: TSN, weights: ZooWeights, label: str) -> None:
    """Every tensor of the file has its place in the backbone and the backbone's are all in the file, shapes equal."""
    own = model.backbone.state_dict()
    name = model.spec.name
    held = resnet_name(weights.backbone)
    hint = f" (the file holds a {held})" if held not in (None, name) else ""
    extra = [*weights.foreign, *(weights.origin[key] for key in weights.backbone if key not in own)]
    if extra:
        raise ZooCheckpointError(f"{label}: {len(extra)} tensors of the {weights.format} checkpoint have no place "
                                 f"in backbone {name!r}{hint} (first: {extra[0]})")
    missing = [key for key in own if key not in weights.backbone and not key.endswith(_BATCH_COUNT)]
    if missing:
        raise ZooCheckpointError(f"{label}: {len(missing)} tensors of backbone {name!r} are not in the "
                                 f"{weights.format} checkpoint{hint} (first: backbone.{missing[0]})")
    for key, tensor in weights.backbone.items():
        if tensor.shape != own[key].shape:
            raise ZooCheckpointError(f"{label}: {weights.origin[key]} has shape {tuple(tensor.shape)} in the file "
                                     f"but backbone.{key} has {tuple(own[key].shape)} in the model")


def _check_normalisation(model: TSN, weights: ZooWeights, label: str) -> None:
    """A mean and std kept in the file must be the model's (``spec`` on 0..1, the file's on 0..255)."""
    for name, values in weights.normalisation.items():
        expected = torch.tensor(getattr(model.spec, name), dtype=torch.float32) * 255
        if values.numel() != expected.numel() or not torch.allclose(values.flatten().float(), expected, atol=1e-3):
            raise ZooCheckpointError(f"{label}: normalises with {name} {values.flatten().tolist()} (0..255), and "
                                     f"{model.spec.name} with {[round(v, 3) for v in expected.tolist()]}")


def _load_head(model: TSN, weights: ZooWeights, label: str, whole_model: bool) -> bool:
    """The file's classifier into a GAP head of as many classes; else the model keeps its new head (logged)."""
    classes = weights.num_classes
    fits = (isinstance(model.head, GAPHead) and classes is not None and set(weights.head) == {"weight", "bias"}
            and all(weights.head[k].shape == getattr(model.head.fc, k).shape for k in ("weight", "bias")))
    if fits:
        model.head.fc.load_state_dict(weights.head)
        logger.info("%s: classifier of %d classes loaded", label, classes)
        return True
    reason = ("has no classifier" if classes is None else
              f"has a classifier of {classes} classes and the model a {type(model.head).__name__} of "
              f"{model.num_classes}")
    if whole_model:
        raise ZooCheckpointError(f"{label}: {reason}")
    logger.info("%s: %s: the head starts new", label, reason)
    return False


def load_zoo_weights(model: TSN, weights: ZooWeights, label: str, whole_model: bool = False) -> bool:
    """Load ``weights`` into ``model`` (a ResNet TSN; ``label`` names the file in errors): the backbone always,
    strictly (an extra, missing or reshaped tensor, or other shifted convolutions, is a ``ZooCheckpointError``),
    and the classifier when it has the model's classes (``whole_model``: it must). Returns whether it did."""
    if resnet_name(model.backbone.state_dict()) != model.spec.name:
        raise ZooCheckpointError(f"{label}: a {weights.format} checkpoint of a ResNet, and backbone "
                                 f"{model.spec.name!r} is none: use resnet18, 34, 50, 101 or 152")
    _check_shift(model, weights, label, whole_model)
    _check_backbone(model, weights, label)
    _check_normalisation(model, weights, label)
    model.backbone.load_state_dict(weights.backbone, strict=False)  # only step counters can be absent (checked)
    return _load_head(model, weights, label, whole_model)
