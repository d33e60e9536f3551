"""The training subsystem's config readers: a ``Config`` -> the built run (``build_training``), and the
entry points that take a config (``train``, ``run_linear_probe``, ``probe_init_head``).

Everything they call (``tsn.training.trainer``, ``tsn.training.linear_probe``) takes built objects and
plain values.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tsn.build import (
    build_class_names,
    build_dataset,
    build_loader,
    build_optimizer,
    build_tsn,
    list_path,
    temporal_settings,
    val_is_test_list,
)
from tsn.config import Config, ConfigError, TrainConfig, resolve_path, save_config
from tsn.data.dataset import ClipDataset
from tsn.evaluation.build import build_inference_model
from tsn.models import TSN, convert_sync_batchnorm
from tsn.runtime.allocator import strategy as allocator_strategy
from tsn.runtime.device import resolve_device
from tsn.runtime.distributed import DistInfo, cleanup_distributed, init_distributed
from tsn.training.ema import WeightAverage
from tsn.training.linear_probe import (
    FeatureSettings,
    ProbeFit,
    ProbeResult,
    fit_head,
    probe_features,
    probe_report,
)
from tsn.training.losses import inverse_frequency_weights
from tsn.training.schedulers import build_scheduler
from tsn.training.trainer import (
    LossRecipe,
    Recipe,
    TrainingRun,
    TrainResult,
    rank_seed,
    resume_from_latest,
    run_training,
    seed_everything,
    seed_random_generators,
    setup_logging,
    training_net,
    truncate_jsonl,
)

logger = logging.getLogger("tsn.train")


def train(cfg: Config, work_dir: Path, resume: bool = False, device: str = "auto",
          progress: bool = True, stop_after_epoch: int | None = None) -> TrainResult:
    """Train the TSN ``cfg`` describes; files under ``work_dir``; ``resume`` continues from ``latest.pth``.

    ``stop_after_epoch``: return once this many epochs (of the ``train.epochs`` schedule) are done,
    as a run cut short by a time limit would; ``resume`` later finishes it. None: train to the end.
    """
    info = init_distributed(device)
    try:
        run = build_training(cfg, Path(work_dir), info, resume, progress)
        return run_training(run, progress, stop_after_epoch)
    finally:
        cleanup_distributed(info)


def build_loss_recipe(train: TrainConfig, class_weights: tuple[float, ...] | None = None) -> LossRecipe:
    """``train``'s amp, mixup, label smoothing and L1, with ``class_weights`` (``train.class_balance: loss``)."""
    return LossRecipe(amp=train.amp, mixup_alpha=train.mixup_alpha, label_smoothing=train.label_smoothing,
                      l1=train.l1, class_weights=class_weights)


def build_recipe(cfg: Config, train_labels: Sequence[int], num_classes: int) -> Recipe:
    """The plain values of ``cfg`` that the training loop reads; ``train_labels`` give the loss weights of
    ``train.class_balance: loss``."""
    train = cfg.train
    weights = inverse_frequency_weights(train_labels, num_classes) if train.class_balance == "loss" else None
    if weights is not None:
        logger.info("class loss weights: %s", ", ".join(f"{w:.3g}" for w in weights))
    return Recipe(epochs=train.epochs, val_every=train.val_every, seed=train.seed,
                  loss=build_loss_recipe(train, weights),
                  clip_grad_norm=train.clip_grad_norm, channels_last=train.channels_last,
                  clips_per_forward=cfg.test.clips_per_forward, on_nonfinite=cfg.test.on_nonfinite)


def build_training(cfg: Config, work_dir: Path, info: DistInfo, resume: bool, progress: bool) -> TrainingRun:
    """Everything the loop needs for ``cfg`` on this rank, ready for its first epoch: logging set up, generators
    seeded, ``config.yaml`` written (rank 0), data and model built, ``latest.pth`` loaded when ``resume``,
    and the head fitted by the linear probe (``train.head_init``) on a fresh start."""
    tcfg = cfg.train
    setup_logging(work_dir, info.is_main)
    seed_everything(tcfg.seed, tcfg.deterministic)
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, work_dir / "config.yaml")
    run = _build_run(cfg, work_dir, info)
    if resume:
        run.start_epoch, run.best_top1 = resume_from_latest(run, temporal_settings(cfg))
        if info.is_main:
            truncate_jsonl(work_dir / "metrics.jsonl", run.start_epoch)
    if run.start_epoch == 0 and tcfg.head_init == "linear_probe":
        probe_init_head(cfg, run.model, len(run.class_names), info.device, work_dir / "probe_cache",
                        info.distributed, progress and info.is_main)
        if run.ema is not None:
            run.ema.module.load_state_dict(run.model.state_dict())  # the average starts from the probed head
    run.net = training_net(run.model, info, tcfg.compile)
    if run.start_epoch == 0:
        # The model, its probed head and the average above came from the shared seed, the same on
        # every rank; from here each rank draws its own dropout masks from its own stream (a resumed
        # run restored the states each rank had instead, in resume_from_latest).
        seed_random_generators(rank_seed(tcfg.seed, info.rank))
    return run


def _build_run(cfg: Config, work_dir: Path, info: DistInfo) -> TrainingRun:
    """The data, model, optimizer, schedule, scaler and generators of ``cfg``, in the order that draws the
    random numbers of every earlier run (``net`` is the bare model until ``build_training`` wraps it)."""
    tcfg = cfg.train
    class_names = build_class_names(cfg)
    train_set = build_dataset(cfg, "train", len(class_names))
    val_set = build_dataset(cfg, "val", len(class_names))
    train_loader = build_loader(cfg, train_set, train=True, distributed=info.distributed)
    val_loader = build_loader(cfg, val_set, train=False, distributed=info.distributed)
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_set)} training videos make no full batch of {cfg.data.batch_size} "
                         f"per process: lower data.batch_size")
    logger.info("%d classes; %d train and %d val videos; %d steps per epoch on %d process(es), device %s",
                len(class_names), len(train_set), len(val_set), len(train_loader), info.world_size, info.device)
    logger.info("memory allocator: %s", allocator_strategy())
    segment_seconds = train_set.segment_seconds() if info.is_main else None  # kept for streaming (tsn.apps.stream)
    val_is_test = _check_val_list(cfg)
    model = _build_model(cfg, len(class_names), info)
    optimizer = build_optimizer(tcfg, model)
    schedule = build_scheduler(optimizer, tcfg, len(train_loader))
    scaler = torch.amp.GradScaler(info.device.type, enabled=tcfg.amp == "fp16" and info.device.type == "cuda")
    mix_rng = np.random.default_rng([tcfg.seed, info.rank, 7])
    ema = WeightAverage(model, tcfg.ema_decay) if tcfg.ema_decay is not None else None
    return TrainingRun(model=model, net=model, optimizer=optimizer, schedule=schedule, scaler=scaler, mix_rng=mix_rng,
                       ema=ema, train_loader=train_loader, val_loader=val_loader, class_names=class_names, info=info,
                       work_dir=work_dir, recipe=build_recipe(cfg, [r.label for r in train_set.records], len(class_names)),
                       config=cfg.to_dict(),
                       selected_on=str(list_path(cfg, "val").resolve()), val_is_test=val_is_test,
                       segment_seconds=segment_seconds)


def _check_val_list(cfg: Config) -> bool:
    """Whether ``cfg`` validates on its test list, logged (a warning when ``best.pth`` is chosen on it)."""
    val_is_test = val_is_test_list(cfg)
    if val_is_test and cfg.train.val_every >= cfg.train.epochs:
        logger.info("the validation list is the test list, validated only after the last epoch: nothing is chosen "
                    "on it")
    elif val_is_test:
        logger.warning("the validation list is the test list (%s): best.pth is chosen on the videos it would be "
                       "tested on, so its test accuracy is optimistic; test latest.pth, or validate on a split of "
                       "the training list (tools/build_lists.py --carve-val)", list_path(cfg, "val"))
    return val_is_test


def _build_model(cfg: Config, num_classes: int, info: DistInfo) -> TSN:
    """``cfg``'s TSN on the rank's device (synchronised BatchNorm under DDP on CUDA; channels-last weights)."""
    model = build_tsn(cfg, num_classes)
    if info.distributed and info.device.type == "cuda":
        model = convert_sync_batchnorm(model)
    model.to(info.device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def probe_dataset(cfg: Config, list_file: Path, num_classes: int, num_clips: int | None,
                  crops: int | None) -> ClipDataset:
    """The deterministic multi-view dataset the probe's features come from (``tools/test.py``'s views)."""
    dataset = build_dataset(cfg, "test", num_classes, list_file=list_file, num_clips=num_clips, crops=crops)
    if dataset.view_mirror() is not None:
        raise ConfigError("test.crops", "10 crops with data.flip_label_map: the linear probe does not map the labels "
                                        "of its mirrored views; use 1 or 3 crops for it (--crops)")
    return dataset


def pretrained_name(cfg: Config) -> str:
    """The backbone's initial weights for the cache key: the ImageNet file, a named file (with its size and
    time), or random (``false``, seeded with ``train.seed``)."""
    pretrained = cfg.model.pretrained
    if isinstance(pretrained, str):
        path = resolve_path(cfg.data, pretrained)
        stat = path.stat() if path.exists() else None
        return f"file:{path.resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"
    return "imagenet" if pretrained else f"random:{cfg.train.seed}"


def build_feature_settings(cfg: Config, weights: str) -> FeatureSettings:
    """How the probe's features are computed for ``cfg``, and the config keys their cache key names."""
    model = cfg.model
    keys = {"backbone": model.backbone, "head": model.head, "consensus": model.consensus,
            "bilinear_dim": model.bilinear_dim, "temporal": [model.temporal, model.shift_div, model.shift_direction]}
    return FeatureSettings(amp=cfg.train.amp, channels_last=cfg.train.channels_last,
                           clips_per_forward=cfg.test.clips_per_forward, on_nonfinite=cfg.test.on_nonfinite,
                           model_keys=keys, weights=weights)


def run_linear_probe(cfg: Config, out_dir: Path, train_list: Path | None = None, test_list: Path | None = None,
                     checkpoint: Path | None = None, l2: float | None = None, num_clips: int | None = None,
                     crops: int | None = None, device: str = "auto", cache_dir: Path | None = None,
                     progress: bool = True) -> ProbeResult:
    """Linear probe of the frozen backbone (ImageNet weights, or ``checkpoint``'s): features of the train and
    test lists (``data.train_list`` and ``data.test_list`` by default), the fit, and ``tools/test.py``'s
    report files under ``out_dir`` plus ``probe.json`` and ``classifier.npz``."""
    torch_device = resolve_device(device)
    class_names = build_class_names(cfg)
    num_classes = len(class_names)
    torch.manual_seed(cfg.train.seed)  # new head layers (the bilinear reduction) as the trainer draws them
    model = build_inference_model(cfg, num_classes, checkpoint).to(torch_device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    weights = pretrained_name(cfg) if checkpoint is None else \
        f"{checkpoint.resolve()}:{checkpoint.stat().st_size}:{checkpoint.stat().st_mtime_ns}"
    settings = build_feature_settings(cfg, weights)
    cache = cache_dir if cache_dir is not None else out_dir / "cache"
    train_set = probe_dataset(cfg, train_list or list_path(cfg, "train"), num_classes, num_clips, crops)
    test_set = probe_dataset(cfg, test_list or list_path(cfg, "test"), num_classes, num_clips, crops)
    logger.info("linear probe: %d train and %d test videos, %d view(s) each", len(train_set), len(test_set),
                train_set.num_clips * (crops if crops is not None else cfg.test.crops))
    train = probe_features(model, train_set, build_loader(cfg, train_set, train=False, distributed=False), settings,
                           torch_device, cache, progress)
    test = probe_features(model, test_set, build_loader(cfg, test_set, train=False, distributed=False), settings,
                          torch_device, cache, progress)
    return probe_report(train, test, test_set, class_names, out_dir, l2, cfg.train.seed,
                        cfg.train.class_balance != "none")


def probe_init_head(cfg: Config, model: TSN, num_classes: int, device: torch.device, cache_dir: Path | None,
                    distributed: bool = False, progress: bool = True) -> ProbeFit:
    """LP-FT's first stage: fit the probe on the training list's features from ``model`` as it is now (its
    pretrained backbone) and copy it into ``model.head.fc``. A ``ConfigError`` when ``cfg``'s model cannot
    take a probed head: a maximum of scores, or a BatchNorm on batch statistics."""
    if cfg.model.consensus not in ("avg", "feature_max"):
        raise ConfigError("train.head_init", "linear_probe needs model.consensus: avg or feature_max (the probe is "
                          "a linear classifier of the pooled segment features, which max of scores does not compute)")
    moving = model.batch_statistics_layers()
    if moving:
        raise ConfigError("train.head_init", f"linear_probe: {len(moving)} BatchNorm layer(s) would train on batch "
                          f"statistics (first: {moving[0]}), so the head would not see the features the probe is "
                          f"fitted on: set model.freeze_bn: true (or freeze the backbone, or partial BN with "
                          f"model.frozen_stages >= 1), or train.head_init: random")
    dataset = probe_dataset(cfg, list_path(cfg, "train"), num_classes, None, None)
    logger.info("linear probe for the head: %d train videos, %d view(s) each", len(dataset),
                dataset.num_clips * cfg.test.crops)
    loader = build_loader(cfg, dataset, train=False, distributed=distributed)
    features = probe_features(model, dataset, loader, build_feature_settings(cfg, pretrained_name(cfg)), device,
                              cache_dir, progress, distributed)
    return fit_head(model, features, num_classes, cfg.train.seed, cfg.train.class_balance != "none")
