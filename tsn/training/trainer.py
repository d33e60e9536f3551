"""The training loop: one device or torchrun/DDP, checkpoints and resume, logs and curves.

Per epoch: train with the configured recipe (mixup, label smoothing, L1, gradient clipping,
AMP), step the schedule per iteration, validate every ``train.val_every`` epochs (and after the
last), then write ``best.pth`` on a new best val top-1 and ``latest.pth``, atomically, one line
of ``metrics.jsonl`` and the TensorBoard scalars. Only rank 0 writes files.

Resume: ``latest.pth`` holds the model, optimizer, schedule, scaler, epoch, best metric,
config and the RNG states of every generator the run draws from; data order and augmentation
are functions of (seed, epoch, index), so a resumed run repeats the uninterrupted one exactly
(bit for bit on the CPU in deterministic mode).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tsn.runtime.allocator import strategy as allocator_strategy
from tsn.config import Config, TrainConfig, save_config
from tsn.data.dataset import SkippedVideo
from tsn.data.loader import set_loader_epoch
from tsn.build import (build_class_names, build_dataset, build_loader, build_optimizer, build_tsn, list_path,
                              temporal_settings, val_is_test_list)
from tsn.checkpoint import (
    CheckpointError,
    capture_rng_state,
    check_trained_with,
    generator_state,
    load_latest_good,
    restore_rng_state,
    save_checkpoint,
    set_generator_state,
)
from tsn.runtime.distributed import DistInfo, barrier, cleanup_distributed, init_distributed
from tsn.training.ema import WeightAverage
from tsn.evaluation.evaluate import autocast_context, evaluate
from tsn.training.losses import cross_entropy, l1_penalty, mixup, mixup_cross_entropy
from tsn.evaluation.metrics import EpochMetrics, MetricAccumulator, confusion_matrix_image
from tsn.data.prefetch import DevicePrefetcher
from tsn.training.linear_probe import probe_init_head
from tsn.training.schedulers import build_scheduler
from tsn.fileio import atomic_write_text
from tsn.models import convert_sync_batchnorm, load_state_dict_flexible, unwrap

logger = logging.getLogger("tsn.train")

LATEST = "latest.pth"
# Steps between host syncs of the training loss (progress bar and the check for a NaN/inf loss).
SYNC_EVERY = 10
BEST = "best.pth"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reached: the epoch count, the best and the last validation top-1."""

    epochs: int
    best_top1: float
    last_val: EpochMetrics | None
    work_dir: Path


def setup_logging(work_dir: Path | None, is_main: bool) -> None:
    """Log lines of level INFO to the console and (rank 0) to ``work_dir/train.log``; other ranks warn only."""
    root = logging.getLogger("tsn")
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler()
    console.setFormatter(formatter)
    root.addHandler(console)
    if is_main and work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(work_dir / "train.log")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    root.propagate = False


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """A seed for one rank (and resumed epoch) drawn from (seed, rank, epoch) by numpy's SeedSequence, so that no
    two (seed, rank) pairs share a stream, as ``seed + rank`` would (seed 0 rank 1 = seed 1 rank 0)."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_random_generators(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch's (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch, numpy and random; deterministic kernels, or cudnn autotuning for speed."""
    seed_random_generators(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


class SkipLog:
    """Every video skipped for being unreadable: logged once, written to ``skipped.csv`` (rank 0)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.seen: dict[str, str] = {}
        self.count = 0
        # A resumed run keeps the files an earlier run already reported, so none is listed twice.
        if path is not None and path.is_file():
            with open(path, newline="") as handle:
                for row in csv.DictReader(handle):
                    self.seen[row["path"]] = row["reason"]

    def add(self, skipped: tuple[SkippedVideo, ...] | list[SkippedVideo], split: str) -> None:
        for item in skipped:
            self.count += 1
            if item.path not in self.seen:
                self.seen[item.path] = item.reason
                logger.warning("skipped %s (%s split): %s", item.path, split, item.reason)
                if self.path is not None:
                    new = not self.path.exists()
                    with open(self.path, "a", newline="") as handle:
                        writer = csv.writer(handle)
                        if new:
                            writer.writerow(["path", "split", "reason"])
                        writer.writerow([item.path, split, item.reason])


def gather_objects(value: Any, info: DistInfo) -> list[Any]:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (``[value]`` in a single process)."""
    if not info.distributed:
        return [value]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def gather_skipped(skipped: list[SkippedVideo], info: DistInfo) -> list[SkippedVideo]:
    """All ranks' skips on every rank (unchanged in a single process)."""
    if not info.distributed:
        return skipped
    return [SkippedVideo(*item) for part in gather_objects([tuple(s) for s in skipped], info) for item in part]


def _truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Keep the ``metrics.jsonl`` lines of epochs up to ``last_epoch`` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and json.loads(line)["epoch"] <= last_epoch]
    atomic_write_text(path, "".join(kept))


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The largest learning rate of the groups: the head's while ``train.backbone_lr_mult <= 1``."""
    return max(float(group["lr"]) for group in optimizer.param_groups)


def train(cfg: Config, work_dir: Path, resume: bool = False, device: str = "auto",
          progress: bool = True, stop_after_epoch: int | None = None) -> TrainResult:
    """Train the TSN ``cfg`` describes; files under ``work_dir``; ``resume`` continues from ``latest.pth``.

    ``stop_after_epoch``: return once this many epochs (of the ``train.epochs`` schedule) are done,
    as a run cut short by a time limit would; ``resume`` later finishes it. None: train to the end.
    """
    info = init_distributed(device)
    try:
        return _train(cfg, Path(work_dir), resume, info, progress, stop_after_epoch)
    finally:
        cleanup_distributed(info)


def _train(cfg: Config, work_dir: Path, resume: bool, info: DistInfo, progress: bool,
           stop_after_epoch: int | None) -> TrainResult:
    tcfg = cfg.train
    setup_logging(work_dir, info.is_main)
    seed_everything(tcfg.seed, tcfg.deterministic)
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, work_dir / "config.yaml")
    class_names = build_class_names(cfg)
    num_classes = len(class_names)
    train_set = build_dataset(cfg, "train", num_classes)
    val_set = build_dataset(cfg, "val", num_classes)
    train_loader = build_loader(cfg, train_set, train=True, distributed=info.distributed)
    val_loader = build_loader(cfg, val_set, train=False, distributed=info.distributed)
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_set)} training videos make no full batch of {cfg.data.batch_size} "
                         f"per process: lower data.batch_size")
    logger.info("%d classes; %d train and %d val videos; %d steps per epoch on %d process(es), device %s",
                num_classes, len(train_set), len(val_set), len(train_loader), info.world_size, info.device)
    logger.info("memory allocator: %s", allocator_strategy())
    segment_seconds = train_set.segment_seconds() if info.is_main else None  # kept for streaming (tsn.apps.stream)
    val_is_test = val_is_test_list(cfg)
    if val_is_test and tcfg.val_every >= tcfg.epochs:
        logger.info("the validation list is the test list, validated only after the last epoch: nothing is chosen "
                    "on it")
    elif val_is_test:
        logger.warning("the validation list is the test list (%s): best.pth is chosen on the videos it would be "
                       "tested on, so its test accuracy is optimistic; test latest.pth, or validate on a split of "
                       "the training list (tools/build_lists.py --carve-val)", list_path(cfg, "val"))

    model = build_tsn(cfg, num_classes)
    spec = model.spec
    mean, std = tuple(spec.mean), tuple(spec.std)
    if info.distributed and info.device.type == "cuda":
        model = convert_sync_batchnorm(model)
    model.to(info.device)
    use_cuda = info.device.type == "cuda"
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(tcfg, model)
    schedule = build_scheduler(optimizer, tcfg, len(train_loader))
    scaler = torch.amp.GradScaler(info.device.type, enabled=tcfg.amp == "fp16" and use_cuda)
    mix_rng = np.random.default_rng([tcfg.seed, info.rank, 7])

    ema = WeightAverage(model, tcfg.ema_decay) if tcfg.ema_decay is not None else None
    start_epoch, best_top1 = 0, -1.0
    if resume:
        start_epoch, best_top1 = _resume(work_dir, model, optimizer, schedule, scaler, mix_rng, ema, info,
                                         tcfg.seed, temporal_settings(cfg))
        if info.is_main:
            _truncate_jsonl(work_dir / "metrics.jsonl", start_epoch)
    if start_epoch == 0 and tcfg.head_init == "linear_probe":
        probe_init_head(cfg, model, num_classes, info.device, work_dir / "probe_cache", info.distributed,
                        progress and info.is_main)
        if ema is not None:
            ema.module.load_state_dict(model.state_dict())  # the average starts from the probed head

    net: nn.Module = model
    if info.distributed:
        net = DistributedDataParallel(model, device_ids=[info.local_rank] if use_cuda else None)
    if tcfg.compile:
        net = torch.compile(net)
    if start_epoch == 0:
        # The model, its probed head and the average above came from the shared seed, the same on
        # every rank; from here each rank draws its own dropout masks from its own stream (a resumed
        # run restored the states each rank had instead, in _resume).
        seed_random_generators(rank_seed(tcfg.seed, info.rank))

    writer = _summary_writer(work_dir) if info.is_main else None
    skip_log = SkipLog(work_dir / "skipped.csv" if info.is_main else None)
    last_val: EpochMetrics | None = None
    end_epoch = tcfg.epochs if stop_after_epoch is None else min(stop_after_epoch, tcfg.epochs)
    for epoch in range(start_epoch, end_epoch):
        started = time.time()
        set_loader_epoch(train_loader, epoch)
        first_lr = _current_lr(optimizer)  # the rate of this epoch's first step (the schedule set it)
        train_metrics, skipped, last_lr = _train_epoch(net, model, train_loader, optimizer, schedule, scaler,
                                                       mix_rng, ema, cfg, info, mean, std, num_classes, epoch,
                                                       progress)
        skip_log.add(gather_skipped(skipped, info), "train")
        val_due = (epoch + 1) % tcfg.val_every == 0 or epoch + 1 == tcfg.epochs
        val_metrics = None
        if val_due:
            set_loader_epoch(val_loader, epoch)
            evaluated = ema.module if ema is not None else net  # the averaged weights are the model that is kept
            val_metrics, predictions = evaluate(evaluated, val_loader, info.device, num_classes, mean, std, tcfg.amp,
                                                progress=progress and info.is_main,
                                                channels_last=tcfg.channels_last,
                                                clips_per_forward=cfg.test.clips_per_forward,
                                                on_nonfinite=cfg.test.on_nonfinite)
            skip_log.add(gather_skipped(list(predictions.skipped), info), "val")
            last_val = val_metrics
        schedule.step_epoch(val_metrics.top1 if val_metrics is not None else None)
        is_best = val_metrics is not None and val_metrics.top1 > best_top1
        if is_best:
            best_top1 = val_metrics.top1
        if info.is_main:
            record = {"epoch": epoch + 1, "train_loss": train_metrics.loss, "train_top1": train_metrics.top1,
                      "train_mean_class_accuracy": train_metrics.mean_class_accuracy,
                      "val_loss": val_metrics.loss if val_metrics else None,
                      "val_top1": val_metrics.top1 if val_metrics else None,
                      "val_mean_class_accuracy": val_metrics.mean_class_accuracy if val_metrics else None,
                      "lr": first_lr, "lr_last": last_lr,
                      "train_samples": train_metrics.count, "val_samples": val_metrics.count if val_metrics else None,
                      "val_skipped": val_metrics.skipped if val_metrics else None,
                      "val_is_test_list": val_is_test,
                      "seconds": round(time.time() - started, 2)}
            _append_jsonl(work_dir / "metrics.jsonl", record)
            _log_scalars(writer, record, epoch + 1)
        random_states = gather_objects((capture_rng_state(), generator_state(mix_rng)), info)  # every rank's
        if info.is_main:
            state = _checkpoint_state(cfg, class_names, model, optimizer, schedule, scaler, random_states, ema,
                                      epoch + 1, best_top1)
            state["segment_seconds"] = segment_seconds
            # best first: latest.pth records the new best, so a kill between the two writes must leave
            # best.pth ahead of it (the resumed epoch writes both again), never behind it for good
            if is_best:
                # best.pth names the list it was chosen on, so that testing it on that list is flagged
                save_checkpoint({**state, "selected_on": str(list_path(cfg, "val").resolve())}, work_dir / BEST,
                                keep_previous=False)
            save_checkpoint(state, work_dir / LATEST)
            val_text = (f"val loss {val_metrics.loss:.4f} top1 {val_metrics.top1:.4f} "
                        f"mca {val_metrics.mean_class_accuracy:.4f} on {val_metrics.count} videos"
                        + (f" ({val_metrics.skipped} skipped)" if val_metrics.skipped else "")) \
                if val_metrics else "no val"
            logger.info("epoch %d/%d: train loss %.4f top1 %.4f mca %.4f, %s, lr %.3g to %.3g, %.1fs", epoch + 1,
                        tcfg.epochs, train_metrics.loss, train_metrics.top1, train_metrics.mean_class_accuracy,
                        val_text, first_lr, last_lr, time.time() - started)
        barrier(info)
    if writer is not None:
        if last_val is not None:
            image = confusion_matrix_image(last_val.confusion, class_names)
            writer.add_image("val/confusion_matrix", image, end_epoch, dataformats="HWC")
        writer.close()
    if skip_log.count:
        logger.warning("%d unreadable sample(s) were replaced; see %s", skip_log.count, work_dir / "skipped.csv")
    return TrainResult(end_epoch, max(best_top1, 0.0), last_val, work_dir)


def _train_epoch(net: nn.Module, model: nn.Module, loader, optimizer, schedule, scaler, mix_rng,
                 ema: WeightAverage | None, cfg: Config, info: DistInfo, mean, std, num_classes: int, epoch: int,
                 progress: bool) -> tuple[EpochMetrics, list[SkippedVideo], float]:
    """One pass over ``loader``; metrics accumulate on the device and sync once at the end.

    Returns the metrics, the videos skipped, and the (head) learning rate of the last step taken."""
    from tqdm import tqdm

    tcfg = cfg.train
    net.train()
    meter = MetricAccumulator(num_classes, info.device)
    skipped: list[SkippedVideo] = []
    # On CUDA the next batch is copied and normalised on a side stream while this step runs.
    batches = DevicePrefetcher(loader, info.device, mean, std, tcfg.channels_last)
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{tcfg.epochs}", disable=not (progress and info.is_main),
               dynamic_ncols=True, leave=False)
    last_lr = _current_lr(optimizer)
    for step, batch in enumerate(bar):
        skipped.extend(batch.skipped)
        clips, labels = batch.clips, batch.labels  # (B, T, C, H, W) float, normalised on the device
        logits, loss = compute_loss(net, model, clips, labels, tcfg, mix_rng, info.device)
        last_lr = _current_lr(optimizer)
        optimizer_step(loss, model, optimizer, scaler, tcfg.clip_grad_norm)
        if ema is not None:
            ema.update(model)
        schedule.step_iteration()
        meter.update(logits.detach().float(), labels, loss.detach())
        if step % SYNC_EVERY == 0:
            # One host sync every SYNC_EVERY steps (not every step, which would stall the GPU queue).
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at epoch {epoch + 1} step {step}: lower train.lr "
                                         f"or set train.clip_grad_norm")
            if progress and info.is_main:
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{_current_lr(optimizer):.2g}")
    return meter.compute(), skipped, last_lr


def compute_loss(net: nn.Module, model: nn.Module, clips: torch.Tensor, labels: torch.Tensor,
                 recipe: TrainConfig, mix_rng: np.random.Generator,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``clips`` (B, T, C, H, W) float through ``net`` with the recipe's mixup, label
    smoothing and L1 on ``model``'s weights (under autocast for ``recipe.amp``) -> (logits (B, classes), loss)."""
    with autocast_context(device, recipe.amp):
        if recipe.mixup_alpha > 0:
            mixed = mixup(clips, labels, recipe.mixup_alpha, mix_rng)
            logits = net(mixed.clips)
            loss = mixup_cross_entropy(logits.float(), mixed.labels_a, mixed.labels_b, mixed.lam,
                                       recipe.label_smoothing)
        else:
            logits = net(clips)
            loss = cross_entropy(logits.float(), labels, recipe.label_smoothing)
        if recipe.l1 > 0:
            loss = loss + l1_penalty(model, recipe.l1)
    return logits, loss


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, clip_grad_norm: float | None) -> torch.Tensor | None:
    """Backward ``loss`` (scaled for fp16), clip the global gradient norm of ``model`` to
    ``clip_grad_norm`` (on unscaled gradients; None = no clipping) and step ``optimizer``.

    Returns the total gradient norm before clipping (None without clipping). The clipped
    gradients stay in ``.grad`` until the next step.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    norm = None
    if clip_grad_norm is not None:
        scaler.unscale_(optimizer)
        norm = nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return norm


def _checkpoint_state(cfg: Config, class_names: list[str], model: nn.Module, optimizer, schedule, scaler,
                      random_states: list[tuple[dict[str, Any], dict[str, Any]]], ema: WeightAverage | None,
                      epoch: int, best_top1: float) -> dict[str, Any]:
    """What ``latest.pth`` and ``best.pth`` hold; ``ema`` (the averaged weights, with
    ``train.ema_decay``) is what ``tsn.checkpoint.inference_weights`` gives for testing.
    ``random_states``: per rank, (``capture_rng_state()``, the mixup generator's state). The config
    and ``class_names`` make the file enough to infer with (``tsn.evaluation.inference.load_trained``)."""
    extra = {"ema": ema.state_dict()} if ema is not None else {}
    return {**extra,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "best_top1": best_top1,
        "config": cfg.to_dict(),
        "class_names": list(class_names),
        "rng": [global_state for global_state, _ in random_states],  # one per rank
        "mixup_rng": [mixup_state for _, mixup_state in random_states],
    }


def _resume(work_dir: Path, model: nn.Module, optimizer, schedule, scaler, mix_rng,
            ema: WeightAverage | None, info: DistInfo, seed: int, settings: dict[str, object]) -> tuple[int, float]:
    """Load ``latest.pth`` (or its previous copy when it is corrupt); returns (next epoch, best top-1).

    Each rank restores its own random states (``_restore_random_states``)."""
    if not (work_dir / LATEST).exists() and not any(work_dir.glob("latest*.pth")):
        logger.warning("--resume: no checkpoint in %s, starting from scratch", work_dir)
        return 0, -1.0
    try:
        state, used = load_latest_good(work_dir, LATEST)
    except CheckpointError as err:
        raise CheckpointError(err.path, f"cannot resume: {err.reason}") from None
    net = unwrap(model)
    check_trained_with(state, used, {"model.consensus": net.consensus, "data.num_segments": net.num_segments,
                                        **settings})
    load_state_dict_flexible(net, state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    _restore_random_states(state, used, mix_rng, info, seed)
    if ema is not None:
        if "ema" not in state:
            raise CheckpointError(used, "cannot resume with train.ema_decay: the checkpoint has no weight average")
        ema.load_state_dict(state["ema"])
    logger.info("resumed from %s at epoch %d (best val top1 %.4f)", used, state["epoch"], state["best_top1"])
    return int(state["epoch"]), float(state["best_top1"])


def _restore_random_states(state: dict[str, Any], used: Path, mix_rng: np.random.Generator, info: DistInfo,
                           seed: int) -> None:
    """This rank's global and mixup random states from the checkpoint (one per rank, or one dict from
    a single-process checkpoint), so that the resumed run draws what the uninterrupted one would.

    Resumed on another number of processes, there is no such state: each rank is seeded anew
    from (seed, rank, epoch), with a warning, and the draws differ from an uninterrupted run."""
    global_states, mixup_states = state["rng"], state["mixup_rng"]
    if isinstance(global_states, dict):
        global_states, mixup_states = [global_states], [mixup_states]
    if len(global_states) == info.world_size:
        restore_rng_state(global_states[info.rank])
        set_generator_state(mix_rng, mixup_states[info.rank])
        return
    if info.is_main:
        logger.warning("%s was saved by %d process(es), resuming on %d: random states start anew from the seed "
                       "(dropout and mixup draws differ from an uninterrupted run)", used, len(global_states),
                       info.world_size)
    epoch = int(state["epoch"])
    seed_random_generators(rank_seed(seed, info.rank, epoch))
    set_generator_state(mix_rng, generator_state(np.random.default_rng([seed, info.rank, 7, epoch])))


def _summary_writer(work_dir: Path):
    """A tensorboardX writer under ``work_dir/tb``."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(work_dir / "tb"))


def _log_scalars(writer, record: dict[str, Any], epoch: int) -> None:
    if writer is None:
        return
    for key, tag in (("train_loss", "train/loss"), ("train_top1", "train/top1"),
                     ("train_mean_class_accuracy", "train/mean_class_accuracy"), ("val_loss", "val/loss"),
                     ("val_top1", "val/top1"), ("val_mean_class_accuracy", "val/mean_class_accuracy"),
                     ("lr", "lr")):
        value = record.get(key)
        if value is not None and math.isfinite(value):
            writer.add_scalar(tag, value, epoch)
    writer.flush()
