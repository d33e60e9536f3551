"""The one place where a ``Config`` becomes objects: model, datasets, loaders, optimizer.

Everything these functions call takes plain arguments; only ``tools/``, the functions here, and each
subsystem's own config readers (``tsn.training.build``, ``tsn.evaluation.build``, ``tsn.apps.build``,
``tsn.measure.build``, ``tsn.training.schedulers.build_scheduler``) read the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch
from torch.utils.data import DataLoader

from tsn.config import Config, ConfigError, TrainConfig, resolve_path
from tsn.data.dataset import ClipDataset
from tsn.data.lists import VideoRecord, check_labels, read_class_names, read_list
from tsn.data.loader import build_dataloader
from tsn.data.transforms import test_transform, train_transform, val_transform
from tsn.models import TSN, build_model, freeze_stages, param_groups
from tsn.models.backbones import UnknownBackbone
from tsn.models.temporal import NoResidualBlocks

Split = Literal["train", "val", "test"]


def build_class_names(cfg: Config) -> list[str]:
    """Class names from ``data.classes`` (line i = label i)."""
    path = resolve_path(cfg.data, cfg.data.classes)
    if not path.is_file():
        raise ConfigError("data.classes", f"class list {path} not found")
    return read_class_names(path)


def build_tsn(cfg: Config, num_classes: int, load_pretrained: bool = True) -> TSN:
    """The TSN that ``cfg.model`` describes, with ``data.num_segments`` segments. ``load_pretrained=False``:
    random initial weights whatever ``model.pretrained`` says, for a model that a checkpoint fills in
    (no ImageNet file is read, so testing works with an empty torch cache)."""
    pretrained: bool | str | Path = cfg.model.pretrained if load_pretrained else False
    if isinstance(pretrained, str):
        pretrained = resolve_path(cfg.data, pretrained)
    try:
        model = _build_model(cfg, pretrained, num_classes)
    except NoResidualBlocks as error:
        raise ConfigError("model.temporal", str(error)) from None
    except UnknownBackbone as error:
        raise ConfigError("model.backbone", str(error)) from None
    if cfg.model.frozen_stages and not cfg.model.freeze_backbone:
        try:
            freeze_stages(model, cfg.model.frozen_stages)
        except ValueError as err:
            raise ConfigError("model.frozen_stages", str(err)) from None
    return model


def _build_model(cfg: Config, pretrained: bool | str | Path, num_classes: int) -> TSN:
    """``build_model`` with the config's model and data keys."""
    return build_model(
        backbone=cfg.model.backbone,
        pretrained=pretrained,
        head=cfg.model.head,
        num_classes=num_classes,
        num_segments=cfg.data.num_segments,
        consensus=cfg.model.consensus,
        dropout=cfg.model.dropout,
        partial_bn=cfg.model.partial_bn,
        freeze_bn=cfg.model.freeze_bn,
        freeze_backbone=cfg.model.freeze_backbone,
        bilinear_dim=cfg.model.bilinear_dim,
        modality=cfg.data.modality,
        new_length=cfg.data.frames_per_segment,
        # LP-FT's probe sees the head's BatchNorm in eval mode: so must training
        fixed_head_statistics=cfg.train.head_init == "linear_probe",
        temporal=cfg.model.temporal,
        shift_div=cfg.model.shift_div,
        shift_direction=cfg.model.shift_direction,
        pretrained_format=cfg.model.pretrained_format,
    )


def temporal_settings(cfg: Config) -> dict[str, object]:
    """The config keys a checkpoint must have been trained with for its weights to mean the same here (given to
    ``tsn.checkpoint.check_trained_with``): the temporal shift, and its width and direction with TSM."""
    settings: dict[str, object] = {"model.temporal": cfg.model.temporal}
    if cfg.model.temporal == "tsm":
        settings.update({"model.shift_div": cfg.model.shift_div, "model.shift_direction": cfg.model.shift_direction})
    return settings


def list_path(cfg: Config, split: Split) -> Path:
    """The annotation list of ``split``, resolved against ``data.root``."""
    value = {"train": cfg.data.train_list, "val": cfg.data.val_list, "test": cfg.data.test_list}[split]
    return resolve_path(cfg.data, value)


def same_list(first: Path, second: Path) -> bool:
    """Whether two annotation lists are the same: the same file, or files with the same lines (a copy)."""
    if not (first.is_file() and second.is_file()):
        return False
    return first.resolve() == second.resolve() or first.read_bytes() == second.read_bytes()


def val_is_test_list(cfg: Config) -> bool:
    """Whether the run validates on its test list: a checkpoint chosen by validation (``best.pth``) was then
    chosen on the list it is tested on, and its test accuracy is optimistic."""
    return same_list(list_path(cfg, "val"), list_path(cfg, "test"))


def build_dataset(cfg: Config, split: Split, num_classes: int, list_file: Path | None = None,
                  num_clips: int | None = None, crops: int | None = None) -> ClipDataset:
    """The dataset of ``split``: train augmentation, val centre crop, or test multi-view.

    ``list_file``, ``num_clips`` and ``crops`` override the config (``tools/test.py`` flags).
    Labels outside ``num_classes`` are an error naming the list line.
    """
    path = list_file if list_file is not None else list_path(cfg, split)
    if not path.is_file():
        raise ConfigError(f"data.{split}_list", f"list {path} not found")
    records = read_list(path, cfg.data.format)
    check_labels(records, num_classes, path)
    return build_clip_dataset(cfg, split, records, resolve_path(cfg.data, "."), num_clips=num_clips, crops=crops)


def build_clip_dataset(cfg: Config, split: Split, records: Sequence[VideoRecord], root: Path,
                       num_clips: int | None = None, crops: int | None = None,
                       on_error: str | None = None, class_names: Sequence[str] | None = None) -> ClipDataset:
    """The dataset of ``split`` (see ``build_dataset``) over ``records`` with paths relative to ``root``;
    ``on_error`` overrides ``data.on_error`` (``tsn.apps.predict`` raises per video); ``class_names``: the
    model's, where ``data.classes`` may be absent (a checkpoint's)."""
    data = cfg.data
    if split == "train":
        transform = train_transform(data.train_augment, data.input_size, data.short_side, flip=data.flip,
                                    scales=data.train_scales)
        mode, clips = "train", 1
    elif split == "val" and (cfg.train.val_num_clips, cfg.train.val_crops) == (1, 1):
        transform = val_transform(data.input_size, data.short_side)
        mode, clips = "val", 1
    else:  # test, or validation with several views (train.val_num_clips, train.val_crops)
        views = crops if crops is not None else (cfg.train.val_crops if split == "val" else cfg.test.crops)
        num_clips = num_clips if num_clips is not None else (cfg.train.val_num_clips if split == "val" else None)
        if views == 10 and not data.flip and not data.flip_label_map:
            key = "train.val_crops" if split == "val" else "test.crops"
            raise ConfigError(key, "10 crops include mirrored views, and a model trained with data.flip: false has "
                                   "never seen a mirror: use 1 or 3 crops, or give data.flip_label_map")
        transform = test_transform(views, data.input_size, data.short_side)
        mode, clips = "test", num_clips if num_clips is not None else cfg.test.num_clips
    return ClipDataset(records, root, "flow" if data.modality == "flow" else data.format,
                       data.backend, mode, data.num_segments, data.frames_read_per_segment, transform, num_clips=clips,
                       on_error=on_error or data.on_error, seed=cfg.train.seed, train_bounds=data.train_sampling,
                       label_mirror=build_label_mirror(cfg, class_names))


def build_label_mirror(cfg: Config, class_names: Sequence[str] | None = None) -> list[int] | None:
    """``data.flip_label_map`` as the class each class becomes in a mirror (itself where no pair names it);
    None without a map. A name that is not a class (``class_names``, else ``data.classes``'s) is a
    ``ConfigError`` naming it."""
    if not cfg.data.flip_label_map:
        return None
    names = list(class_names) if class_names is not None else build_class_names(cfg)
    mirror = list(range(len(names)))
    for first, second in cfg.data.flip_label_map:
        for name in (first, second):
            if name not in names:
                raise ConfigError("data.flip_label_map", f"{name!r} is not one of the classes "
                                                         f"({cfg.data.classes if class_names is None else 'the model'}'s)")
        a, b = names.index(first), names.index(second)
        mirror[a], mirror[b] = b, a
    return mirror


def build_loader(cfg: Config, dataset: ClipDataset, train: bool, distributed: bool,
                 batch_size: int | None = None) -> DataLoader:
    """A loader over ``dataset``: shuffled with full batches only when ``train``, then class-balanced with
    ``train.class_balance: sampler``."""
    balance = [record.label for record in dataset.records] if train and cfg.train.class_balance == "sampler" else None
    return build_dataloader(dataset, batch_size or cfg.data.batch_size, shuffle=train,
                            num_workers=cfg.data.num_workers, seed=cfg.train.seed, drop_last=train,
                            distributed=distributed, balance_labels=balance)


def build_optimizer(train: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov-free, as TSN) or AdamW over ``param_groups`` (backbone lr multiplier, no decay on bias/norm)."""
    groups = param_groups(model, train.lr, train.weight_decay, train.backbone_lr_mult, train.no_decay_bias_norm)
    if not groups:
        raise ConfigError("model.freeze_backbone", "nothing left to train: every parameter is frozen")
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)
