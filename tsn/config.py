"""Typed run configuration: YAML file + ``section.key=value`` overrides -> frozen dataclasses.

A config file has four sections, ``data``, ``model``, ``train`` and ``test``; every key is
optional and has a default chosen for the common first run: fine-tuning an ImageNet-pretrained
backbone on a few hundred clips. The smallest useful config is therefore::

    data:
      root: /data/my_actions      # holds train.txt, val.txt, test.txt and classes.txt
    model:
      backbone: resnet50

Paths: ``data.root`` is absolute or relative to the current working directory; every other path
in a config (the lists, the class file, a ``model.pretrained`` file) is absolute or relative to
``data.root`` (see ``resolve_path``); ``~`` is expanded.

Errors: an unknown key, a value of the wrong type or outside its range raises ``ConfigError``
whose message names the full dotted key and the reason, e.g.
``train.lr: expected float, got 'abc'``. The dataclasses validate themselves on construction,
so a config built in code is checked exactly like one read from YAML.

Only ``tools/`` and the ``build_*`` functions read a ``Config``; everything below them takes
plain arguments.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from tsn.errors import UserError
from tsn.fileio import atomic_write_text

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "SchedulerConfig",
    "TrainConfig",
    "TestConfig",
    "Config",
    "load_config",
    "save_config",
    "resolve_path",
]


class ConfigError(UserError, ValueError):
    """A bad config value or file; ``str()`` is ``"<key or file>: <reason>"`` on one line."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def _bounded(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with an inclusive/exclusive numeric range checked on construction."""
    bounds = {name: value for name, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if value is not None}
    return field(default=default, metadata={"bounds": bounds})


# A float written as ``1e-3`` is a *string* to YAML 1.1 (it wants ``1.0e-3``); accept it for float keys.
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _type_name(tp: Any) -> str:
    """Human name of an annotation for error messages."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _type_name(arg) for arg in get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against annotation ``tp``; returns it (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is bool:
        if type(value) is bool:
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is Literal:
        for choice in get_args(tp):
            # type() check so that True does not pass for the choice 1
            if type(value) is type(choice) and value == choice:
                return value
    elif origin in (Union, types.UnionType):
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_value(key, value, arg)
            except ConfigError:
                continue
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            item_type = get_args(tp)[0]
            return tuple(_check_value(f"{key}[{i}]", item, item_type) for i, item in enumerate(value))
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"{key}: unsupported annotation {tp!r}")
    raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")


def _check_bounds(key: str, value: Any, bounds: dict[str, float]) -> None:
    """Raise ConfigError when a number lies outside ``bounds`` (None values are not checked)."""
    if value is None:
        return
    if "ge" in bounds and not value >= bounds["ge"]:
        raise ConfigError(key, f"must be >= {bounds['ge']}, got {value!r}")
    if "gt" in bounds and not value > bounds["gt"]:
        raise ConfigError(key, f"must be > {bounds['gt']}, got {value!r}")
    if "le" in bounds and not value <= bounds["le"]:
        raise ConfigError(key, f"must be <= {bounds['le']}, got {value!r}")
    if "lt" in bounds and not value < bounds["lt"]:
        raise ConfigError(key, f"must be < {bounds['lt']}, got {value!r}")


class _Section:
    """Mixin: validates and normalises every field of a frozen dataclass in ``__post_init__``."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            key = f"{self.SECTION}.{f.name}" if self.SECTION else f.name
            value = _check_value(key, getattr(self, f.name), hints[f.name])
            _check_bounds(key, value, f.metadata.get("bounds", {}))
            # frozen dataclass: normalised values (int -> float, list -> tuple) go in this way
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Checks that involve several keys; subclasses override."""


# L per modality when data.new_length is empty: TSN's 5 stacked flow pairs or RGB differences
DEFAULT_NEW_LENGTH = {"rgb": 1, "flow": 5, "rgbdiff": 5}


@dataclass(frozen=True)
class DataConfig(_Section):
    """``data`` section: where the clips are and how they are sampled and batched.

    Attributes:
        root: folder the other paths are relative to (absolute or relative to the working dir).
        train_list, val_list, test_list: annotation lists (``path label`` for ``format: video``,
            ``dir num_frames label`` for ``rawframes``). Defaults match the common
            ``train.txt``/``val.txt``/``test.txt`` next to ``classes.txt`` layout.
        classes: file of class names, one a line, line i = label i.
        format: ``video`` (files decoded on the fly) or ``rawframes`` (folders of JPEGs; with
            ``modality: flow`` the flow folders of ``tools/extract_flow.py``, always rawframes).
        modality: (added key) the TSN stream: ``rgb`` (frames), ``flow`` (stacks of ``new_length``
            optical-flow pairs, 2 x new_length input channels, from flow folders) or ``rgbdiff``
            (``new_length`` differences of ``new_length + 1`` consecutive frames, 3 x new_length
            channels, computed on the fly from videos or frame folders). Flow and RGB difference
            start from the ImageNet weights by TSN's cross-modality initialisation
            (``tsn.models.modality``).
        backend: video decoder: ``auto`` (PyAV, OpenCV taking over the files PyAV cannot read,
            logged once per file), or ``pyav``, ``decord``, ``opencv`` alone, or ``torchcodec``
            (optional: ``pip install 'tsn[torchcodec]'`` and FFmpeg's shared libraries; frames numbered
            and checked by PyAV's index); ignored for rawframes.
        num_segments: K, segments per clip. 8: with ``model.consensus: feature_max`` the frame
            where an action peaks has to be among the sampled ones (on UT-Interaction's frozen
            features, the maximum of 3, 8, 16 and all frames gave 0.65, 0.68, 0.74 and 0.78 top-1).
            The TSN paper trains with 3; the dataset configs keep their recipes' 3 or 8.
        new_length: L, consecutive frames per segment; empty (the default) for the modality's:
            1 for ``rgb``, 5 for ``flow`` and ``rgbdiff`` (TSN's).
        input_size: side of the square network input.
        short_side: frames are scaled so that their short side is this before cropping.
        batch_size: clips per step and per process (8 fits a ResNet-50 with K=3 on any GPU).
        num_workers: DataLoader worker processes.
        on_error: ``skip`` replaces an unreadable sample by another (logged, counted);
            ``raise`` stops at the first one.
        train_augment: (added key) ``multiscale``: TSN's multi-scale corner crop (scales
            1, .875, .75, .66), the default because it keeps most of the frame, which suits
            short fine-tuning on small data; ``random_resized_crop`` (scale .08-1) is stronger
            and suits long runs.
        train_scales: (added key) the crop sides of ``multiscale``, as fractions of the short
            side of the frame resized to ``short_side``. Default 1 and .875: crops that keep
            nearly the whole height, as the test views do (on UT-Interaction TSN's 1, .875, .75,
            .66 cut the two people apart and cost 0.10 top-1 after LP-FT; README, Accuracy).
        flip: (added key) random horizontal flip in training; set false for data whose labels
            depend on direction (Something-Something v2: "left to right"), or keep it and give
            ``flip_label_map``.
        flip_label_map: (added key) pairs of class names that a horizontal mirror swaps, e.g.
            ``[[moving left, moving right]]`` (mmaction2's ``Flip(flip_label_map=...)``): a flipped
            training clip of one gets the other's label, and the mirrored views of ``test.crops: 10``
            count for the swapped class.
        train_sampling: (added key) segment boundaries of the random training frames:
            ``fractional`` (the validation boundaries ``k * n // K``, so every frame can be
            drawn) or ``mmaction2`` (segments of ``n // K`` frames, the last ``n % K`` frames
            never drawn, as mmaction2 and the original TSN); see ``tsn.data.sampling``.
    """

    SECTION: ClassVar[str] = "data"

    root: str = "."
    train_list: str = "train.txt"
    val_list: str = "val.txt"
    test_list: str = "test.txt"
    classes: str = "classes.txt"
    format: Literal["video", "rawframes"] = "video"
    modality: Literal["rgb", "flow", "rgbdiff"] = "rgb"
    backend: Literal["auto", "pyav", "decord", "opencv", "torchcodec"] = "auto"
    num_segments: int = _bounded(8, ge=1)
    new_length: int | None = _bounded(None, ge=1)
    input_size: int = _bounded(224, ge=1)
    short_side: int = _bounded(256, ge=1)
    batch_size: int = _bounded(8, ge=1)
    num_workers: int = _bounded(4, ge=0)
    on_error: Literal["skip", "raise"] = "skip"
    train_augment: Literal["multiscale", "random_resized_crop"] = "multiscale"
    train_scales: tuple[float, ...] = (1.0, 0.875)
    flip: bool = True
    flip_label_map: tuple[tuple[str, ...], ...] = ()
    train_sampling: Literal["fractional", "mmaction2"] = "fractional"

    def _check(self) -> None:
        if not self.train_scales or any(not 0 < scale <= 1 for scale in self.train_scales):
            raise ConfigError("data.train_scales", f"expected scales in (0, 1], got {list(self.train_scales)}")
        if self.modality == "flow" and self.format != "rawframes":
            raise ConfigError("data.format", "modality flow reads flow folders (tools/extract_flow.py): "
                                             "set data.format: rawframes")
        for pair in self.flip_label_map:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError("data.flip_label_map", f"expected pairs of two different class names, got {list(pair)}")
        names = [name for pair in self.flip_label_map for name in pair]
        if len(set(names)) != len(names):
            raise ConfigError("data.flip_label_map", "a class is in two pairs")
        if self.modality == "rgb" and self.new_length not in (None, 1):
            raise ConfigError("data.new_length", "the RGB stream takes one frame per segment (new_length: 1)")

    @property
    def frames_per_segment(self) -> int:
        """L: ``new_length``, or the modality's default (1 for rgb, 5 for flow and rgbdiff)."""
        if self.new_length is not None:
            return self.new_length
        return DEFAULT_NEW_LENGTH[self.modality]

    @property
    def frames_read_per_segment(self) -> int:
        """Frames the loader reads per segment: L, and one more for RGB difference, which makes L
        differences of L + 1 frames."""
        return self.frames_per_segment + (1 if self.modality == "rgbdiff" else 0)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """``model`` section: backbone, head and the fine-tuning controls.

    Attributes:
        backbone: backbone name as ``tsn.models.build_backbone`` knows it. Default
            ``efficientnet_lite0``: its ImageNet weights ship with an install requirement, so a
            config that names no backbone still starts offline, and it is fast on a CPU.
            ``efficientnet_lite1`` and ``efficientnet_lite2`` (ImageNet weights from the extras
            ``lite1`` and ``lite2``) were trained at 240 and 260 px; ``data.input_size`` does not follow
            the backbone (224 unless set).
        pretrained: ``true`` (the backbone's ImageNet weights), ``false`` (random init) or a
            path to a weight file (relative to ``data.root`` unless absolute).
        pretrained_format: (added key) the layout of a ``pretrained`` file: ``torchvision`` (the
            backbone's own published file: torchvision's for ResNets), or a model-zoo checkpoint of a
            ResNet TSN or TSM, whose backbone always loads and whose classifier loads when it has the
            run's number of classes: ``mmaction2`` (1.x), ``tsm`` (mit-han-lab/temporal-shift-module),
            ``tsn_pytorch`` (yjxiong/tsn-pytorch); ``auto`` (default): a zoo layout when the keys show
            one, else ``torchvision`` (``tsn.models.zoo``).
        head: ``gap`` (global average pool + dropout + linear) or ``bilinear`` pooling.
        consensus: how the segments become one prediction per video: ``feature_max`` (default):
            the element-wise maximum of the segments' pooled features goes through the
            classifier (temporal max pooling; a feature that fires where the action peaks
            survives); ``avg`` (TSN) or ``max`` of the segment scores. On UT-Interaction
            ``feature_max`` with 8 segments gave 0.858 mean top-1 over the two folds where
            ``avg`` with 3 gave 0.708 (README, Accuracy).
        dropout: before the classifier. 0 by default: the default recipe starts the classifier
            from a linear probe (``train.head_init``), fitted without dropout; dropout 0.5 under
            that head doubled the first epoch's loss. The TSN papers use 0.8 with random heads.
        partial_bn: freeze every BatchNorm but the first (TSN). On by default: with a batch of
            8 clips x 3 frames of the same videos, BN statistics are poor estimates and
            updating them hurts the pretrained features.
        freeze_bn: (added key) freeze every BatchNorm of the backbone, the first too (which
            partial BN trains): statistics and affine parameters stay ImageNet's. On by default:
            the first layer's batch statistics of 8 correlated clips are far from ImageNet's
            and shift every feature after it (a probed head's loss went from 1.25 to 2.4).
        freeze_backbone: train the head only.
        frozen_stages: (added key) freeze the first N of the backbone's stages (its
            ``feature_layers``, e.g. stem, blocks.0, blocks.2, blocks.4, ... for EfficientNet-Lite0;
            layer1..layer4 for ResNets, whose stem goes with layer1) and everything before them;
            0 = fine-tune every layer.
        bilinear_dim: (added key) channels the bilinear head first reduces to with a 1x1
            convolution (D*D features: 256 -> 65,536); null = no reduction.
        temporal: (added key) ``none`` (TSN: every frame seen alone, the segments pooled without order)
            or ``tsm``: the temporal shift module (``tsn.models.temporal``) in every residual block of
            the backbone, so that the network sees the order of its segments (ResNets,
            mobilenet_v3_large, efficientnet_lite0/1/2; not vgg16_bn, bninception or timm models).
        shift_div: (added key) with ``tsm``, 1/shift_div of the channels move one segment each way (8,
            the paper's).
        shift_direction: (added key) ``bidirectional`` (from the previous and the next segment) or
            ``causal`` (from the previous one only: the online model, which runs on a live stream one
            frame at a time; ``tsn.apps.stream``).
    """

    SECTION: ClassVar[str] = "model"

    backbone: str = "efficientnet_lite0"
    pretrained: bool | str = True
    pretrained_format: Literal["auto", "torchvision", "mmaction2", "tsm", "tsn_pytorch"] = "auto"
    head: Literal["gap", "bilinear"] = "gap"
    consensus: Literal["avg", "max", "feature_max"] = "feature_max"
    dropout: float = _bounded(0.0, ge=0.0, lt=1.0)
    partial_bn: bool = True
    freeze_bn: bool = True
    freeze_backbone: bool = False
    frozen_stages: int = _bounded(0, ge=0)
    bilinear_dim: int | None = _bounded(256, ge=1)
    temporal: Literal["none", "tsm"] = "none"
    shift_div: int = _bounded(8, ge=2)
    shift_direction: Literal["bidirectional", "causal"] = "bidirectional"

    def _check(self) -> None:
        if isinstance(self.pretrained, str) and not self.pretrained.strip():
            raise ConfigError("model.pretrained", "expected true, false or a path, got ''")
        if self.pretrained_format not in ("auto", "torchvision") and not isinstance(self.pretrained, str):
            raise ConfigError("model.pretrained_format", f"{self.pretrained_format} names the layout of a file: "
                                                         f"give its path as model.pretrained")


@dataclass(frozen=True)
class SchedulerConfig(_Section):
    """``train.scheduler`` section: the learning-rate schedule (see ``tsn.training.schedulers``).

    Attributes:
        name: ``cosine`` (default: smooth decay to ``min_lr_ratio`` at the end of training, no
            milestones to tune), ``multistep`` (times ``gamma`` at each milestone epoch),
            ``plateau`` (times ``gamma`` when the validation top-1 stops improving for more
            than ``patience`` validations) or ``none`` (constant).
        milestones: epochs (0-based, from the start of training) where ``multistep`` multiplies
            the learning rate by ``gamma``; strictly increasing.
        gamma: the multiplier of ``multistep`` and ``plateau``.
        warmup_epochs: linear warm-up, stepped every iteration, from ``warmup_start_factor``
            times the learning rate to the full learning rate; composes with every ``name``.
            One epoch keeps the first large steps of a new random head from wrecking the
            pretrained features.
        warmup_start_factor: (added key) the warm-up's first multiplier.
        min_lr_ratio: (added key) ``cosine`` ends at, and ``plateau`` never goes below, this
            fraction of each parameter group's learning rate.
        patience: (added key) validations without improvement that ``plateau`` tolerates.
    """

    SECTION: ClassVar[str] = "train.scheduler"

    name: Literal["multistep", "cosine", "plateau", "none"] = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = _bounded(0.1, gt=0.0, le=1.0)
    warmup_epochs: int = _bounded(1, ge=0)
    warmup_start_factor: float = _bounded(0.1, gt=0.0, le=1.0)
    min_lr_ratio: float = _bounded(0.0, ge=0.0, le=1.0)
    patience: int = _bounded(2, ge=0)

    def _check(self) -> None:
        for i, epoch in enumerate(self.milestones):
            if epoch < 1 or (i > 0 and epoch <= self.milestones[i - 1]):
                raise ConfigError(
                    "train.scheduler.milestones", f"expected strictly increasing epochs >= 1, got {list(self.milestones)}"
                )
        if self.name == "multistep" and not self.milestones:
            raise ConfigError("train.scheduler.milestones", "multistep needs at least one milestone epoch, e.g. [10, 20]")


@dataclass(frozen=True)
class TrainConfig(_Section):
    """``train`` section: optimisation recipe and run controls.

    Attributes:
        epochs: passes over the training list. 10 with cosine after a probed head (LP-FT):
            on a few hundred clips the training top-1 is above 0.9 by then.
        optimizer: ``adamw`` (default) or ``sgd`` (momentum, the TSN recipe). AdamW because
            EfficientNet-Lite0's frozen BatchNorms make SGD steps very uneven across layers:
            at SGD lr 0.01 its gradients were 20 to 60 % of the weights' norm per step and
            training collapsed to chance; SGD suits ResNets and BN-Inception (their configs).
        lr: learning rate of the head for ``batch_size`` clips; the backbone gets
            ``lr * backbone_lr_mult``. 1e-4 with AdamW: LP-FT's small second stage (the head
            is already right). With ``sgd`` set it explicitly (0.001 to 0.01). Scale ``lr``
            with the total batch size.
        momentum: SGD momentum (0.9, as TSN and mmaction2).
        weight_decay: 5e-4, the TSN paper's value (AdamW applies it decoupled, times lr).
        no_decay_bias_norm: no weight decay on any 1-D parameter (biases, normalisation weights,
            layer scales) nor on normalisation layers, as timm.
        backbone_lr_mult: see ``lr``. 1.0: after a probed head the backbone and the head move
            at the same small rate; use 0.1 with a random head.
        label_smoothing: 0 by default: the probed head is fitted to plain labels.
        mixup_alpha: Beta(alpha, alpha) for mixup of clips and labels; 0 = off (the default:
            mixup pays off in long runs, not in a short fine-tune).
        l1: weight of an L1 penalty on weight tensors (not biases or norms); 0 = off.
        clip_grad_norm: clip the global gradient norm to this (40, mmaction2's TSN value, a
            safety net that rarely triggers); null = no clipping.
        scheduler: see ``SchedulerConfig``.
        amp: autocast on CUDA: ``none``, ``bf16`` (Ampere or newer; fastest) or ``fp16``
            (with a GradScaler). Ignored on CPU.
        channels_last: NHWC memory format for weights and clips, on every device: faster with amp
            on CUDA, and on the CPU too (oneDNN's convolutions; see the README's benchmarks).
        compile: ``torch.compile`` the model.
        seed: seeds torch, numpy, random and every loader worker.
        deterministic: deterministic algorithms (reproducible, slower) instead of cudnn
            benchmark.
        val_every: validate every this many epochs (and after the last one).
        head_init: (added key) ``linear_probe`` (default): before the first epoch, fit a logistic regression
            on the frozen features of the training videos (``tsn.training.linear_probe``, the test views)
            and start the classifier from it (LP-FT, Kumar et al., ICLR 2022), so that the
            backbone is fine-tuned under a head that is already right instead of a random one;
            ``random``: the usual random classifier.
        ema_decay: (added key) keep an exponential moving average of the weights with this
            decay (``tsn.training.ema``); validation, ``best.pth`` selection and ``tools/test.py``
            use the average. null = off.
        class_balance: (added key) how classes with fewer training videos are weighed: ``none``
            (every video once per epoch, unweighted), ``sampler`` (each epoch draws every class as
            often as the largest: a class's videos are repeated, every video still seen at least
            once; also under DDP) or ``loss`` (each video's loss weighted ``N / (K * n_c)``, see
            ``tsn.training.losses.inverse_frequency_weights``). With ``sampler`` or ``loss`` the
            linear probe (LP-FT's and ``tools/linear_probe.py``'s) weighs its videos the same way.
            ``loss`` is the default: on balanced lists it computes exactly the unweighted loss (the
            same run, bit for bit), and on UT-Interaction's
            folds with half of two classes' training clips dropped it recalled those classes better
            than ``none`` (docs/experiments.md, "Imbalanced classes").
        val_num_clips: (added key) temporal clips per video in validation (1: the centre
            frames of each segment, the fastest; more, as ``test.num_clips``, makes the val top-1
            that picks ``best.pth`` less noisy, at that many times the cost).
        val_crops: (added key) spatial crops per clip in validation: 1 (centre), 3 or 10 (as
            ``test.crops``).
    """

    SECTION: ClassVar[str] = "train"

    epochs: int = _bounded(10, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = _bounded(1e-4, gt=0.0)
    momentum: float = _bounded(0.9, ge=0.0, lt=1.0)
    weight_decay: float = _bounded(5e-4, ge=0.0)
    no_decay_bias_norm: bool = True
    backbone_lr_mult: float = _bounded(1.0, ge=0.0)
    label_smoothing: float = _bounded(0.0, ge=0.0, lt=1.0)
    mixup_alpha: float = _bounded(0.0, ge=0.0)
    l1: float = _bounded(0.0, ge=0.0)
    clip_grad_norm: float | None = _bounded(40.0, gt=0.0)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    val_every: int = _bounded(1, ge=1)
    head_init: Literal["random", "linear_probe"] = "linear_probe"
    ema_decay: float | None = _bounded(None, gt=0.0, lt=1.0)
    class_balance: Literal["none", "sampler", "loss"] = "loss"
    val_num_clips: int = _bounded(1, ge=1)
    val_crops: Literal[1, 3, 10] = 1


@dataclass(frozen=True)
class TestConfig(_Section):
    """``test`` section: views per video in ``tools/test.py`` (scores averaged over views).

    Attributes:
        num_clips: temporal clips per video, each of ``num_segments`` frames spread over the
            video. 2 clips x 3 crops = 6 views: a cheap multi-view protocol (papers use up to
            25 frames x 10 crops; raise both for reporting).
        crops: spatial crops per clip: 1 (centre), 3 (along the long side) or 10 (4 corners +
            centre, and their flips).
        clips_per_forward: (added key) at most this many clips (views x videos) go through the
            model at once in validation and testing, so that memory stays bounded with many
            views (25 clips x 10 crops x 8 segments would be 2,000 frames per video); the scores
            are the same as in one pass. Small chunks are also faster on a CPU (its caches).
            Clips are normalised to float one chunk at a time, and ``tools/test.py`` loads at most
            ``max(1, clips_per_forward // views)`` videos per batch (``data.batch_size`` at most;
            ``--batch-size`` sets it), so the loader's memory stays bounded too.
        on_nonfinite: (added key) a video that was read but whose scores (or linear-probe features) are NaN
            or infinite, in validation, testing and the linear probe: ``raise`` (default) stops with an
            error naming the videos (a diverged model, an fp16 overflow or a corrupt checkpoint must not
            pass as a result); ``skip`` leaves them out of every metric and lists them in ``skipped.csv``.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class despite its name
    SECTION: ClassVar[str] = "test"

    num_clips: int = _bounded(2, ge=1)
    crops: Literal[1, 3, 10] = 3
    clips_per_forward: int = _bounded(16, ge=1)
    on_nonfinite: Literal["raise", "skip"] = "raise"


@dataclass(frozen=True)
class Config(_Section):
    """The whole run configuration: ``data``, ``model``, ``train`` and ``test``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Config:
        """Nested plain dict (as read from YAML) -> validated Config; missing keys take defaults."""
        return _build(cls, raw, "")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of YAML types (tuples become lists); ``from_dict`` inverts it."""
        return _plain(dataclasses.asdict(self))

    def _check(self) -> None:
        model = self.model
        # LP-FT: the probe is fitted on eval-mode features, so every BatchNorm they pass through must keep
        # fixed statistics in training too; one on batch statistics feeds the head other features than the
        # probe was fitted on (flow on UT-Interaction: the loss went from the probe's 0.8 to 11.7, at chance).
        # The first BatchNorm is fixed by freeze_bn, a frozen backbone, or partial BN with frozen stages (the
        # stem goes with the first stage). Refused here for flow and RGB difference, as always; for every
        # modality tsn.training.linear_probe checks the built model exactly when training starts (a check here would
        # also refuse to load the checkpoints of earlier RGB runs for testing).
        first_bn_fixed = model.freeze_bn or model.freeze_backbone or (model.partial_bn and model.frozen_stages > 0)
        if self.data.modality != "rgb" and self.train.head_init == "linear_probe" and not first_bn_fixed:
            raise ConfigError("model.freeze_bn", f"data.modality {self.data.modality} with train.head_init "
                                                 f"linear_probe needs model.freeze_bn: true (the probe and training "
                                                 f"must see the same BatchNorm statistics); for TSN's partial BN, "
                                                 f"where the first BatchNorm trains, use train.head_init: random")


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so that the dict is plain YAML/JSON."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``; unknown keys name their dotted path."""
    if raw is None:  # an empty section ("test:" with nothing under it)
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(prefix or "config", f"expected a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(dotted, "unknown key" + hint)
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        value = raw[name]
        if dataclasses.is_dataclass(hints[name]):
            value = _build(hints[name], value, f"{prefix}.{name}" if prefix else name)
        kwargs[name] = value
    return cls(**kwargs)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``section.key=value`` (value parsed as YAML) into the nested dict ``raw``."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(repr(item), "expected an override of the form section.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(key, f"cannot parse value {text!r} as YAML: {problem}") from None
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(".".join(parts[: depth + 1]), f"is a value ({child!r}), not a section")
        node = child
    old = node.get(parts[-1])
    if isinstance(old, dict) and isinstance(value, dict):
        _merge(old, value)  # train.scheduler={name: multistep} keeps the file's other scheduler keys
    else:
        node[parts[-1]] = value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Deep-merge ``update`` into ``base`` in place."""
    for key, value in update.items():
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            _merge(base[key], value)
        else:
            base[key] = value


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> Config:
    """YAML file (or None: all defaults) + ``section.key=value`` overrides -> Config.

    Override values are parsed with ``yaml.safe_load``, so ``train.lr=0.1`` is a float,
    ``model.pretrained=false`` a bool and ``train.scheduler.milestones=[10,20]`` a list.
    Raises ConfigError (naming the file and line, or the dotted key) on any problem.
    """
    raw: Any = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(str(path), "config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), f"cannot read config file: {exc}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(where, f"invalid YAML: {problem}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(str(path), f"expected a mapping of sections at the top level, got {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item)
    return Config.from_dict(raw)


def override_config(cfg: Config, overrides: Sequence[str]) -> Config:
    """``cfg`` with ``section.key=value`` overrides applied (parsed and checked as by ``load_config``)."""
    return config_from_dict(cfg.to_dict(), overrides)


def config_from_dict(raw: dict[str, Any], overrides: Sequence[str] = ()) -> Config:
    """A plain config dict (a checkpoint's) with ``section.key=value`` overrides applied *before* it is checked,
    so that an override can mend a value that is no longer valid on its own."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        _apply_override(raw, item)
    return Config.from_dict(raw)


def config_text(cfg: Config) -> str:
    """The resolved ``cfg`` as the YAML text ``save_config`` writes."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved ``cfg`` as YAML, atomically (temp file in the same folder, fsync, rename)."""
    atomic_write_text(Path(path), config_text(cfg))


def resolve_path(data: DataConfig, value: str | os.PathLike[str]) -> Path:
    """A config path -> Path: ``~`` expanded; absolute stays; relative is joined to ``data.root``.

    ``data.root`` itself may be relative; it is then relative to the current working directory.
    """
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return candidate
    return Path(data.root).expanduser() / candidate
