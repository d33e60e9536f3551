"""The training loop: one device or torchrun/DDP, checkpoints and resume, logs and curves.

The loop takes built objects and plain values (``TrainingRun``, made from a config by
``tsn.training.build.build_training``). Per epoch (``run_epoch``): train with the recipe (mixup, label
smoothing, L1, gradient clipping, AMP), step the schedule per iteration, validate every ``train.val_every``
epochs (and after the last), then write ``best.pth`` on a new best val top-1 and ``latest.pth``, atomically,
one line of ``metrics.jsonl`` and the TensorBoard scalars. Only rank 0 writes files.

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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from torch.utils.data import DataLoader

from tsn.data.dataset import SkippedVideo
from tsn.data.loader import set_loader_epoch
from tsn.checkpoint import (
    LATEST,
    CheckpointError,
    capture_rng_state,
    check_trained_with,
    generator_state,
    load_latest_good,
    restore_rng_state,
    save_checkpoint,
    set_generator_state,
)
from tsn.runtime.distributed import DistInfo, barrier
from tsn.training.ema import WeightAverage
from tsn.evaluation.evaluate import autocast_context, evaluate
from tsn.training.losses import cross_entropy, l1_penalty, mixup, mixup_cross_entropy
from tsn.evaluation.metrics import EpochMetrics, MetricAccumulator, confusion_matrix_image
from tsn.data.prefetch import DevicePrefetcher
from tsn.training.schedulers import LRSchedule
from tsn.fileio import atomic_write_text
from tsn.models import TSN, load_state_dict_flexible, unwrap

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter

logger = logging.getLogger("tsn.train")

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


@dataclass(frozen=True)
class LossRecipe:
    """What ``compute_loss`` makes of a batch: autocast ``amp`` ("none", "bf16", "fp16"), mixup's Beta
    ``mixup_alpha`` (0: off), ``label_smoothing``, the ``l1`` weight penalty (0: off) and per-class loss
    weights (``tsn.training.losses.inverse_frequency_weights``; None: unweighted)."""

    amp: str = "none"
    mixup_alpha: float = 0.0
    label_smoothing: float = 0.0
    l1: float = 0.0
    class_weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Recipe:
    """The plain values the loop reads: ``epochs`` in the schedule, validation every ``val_every`` epochs (and
    after the last), the ``seed``, the loss, gradient clipping (None: off), channels-last clips, and the
    validation's clips per forward and what a non-finite score does there."""

    epochs: int
    val_every: int
    seed: int
    loss: LossRecipe
    clip_grad_norm: float | None
    channels_last: bool
    clips_per_forward: int
    on_nonfinite: str


@dataclass
class TrainingRun:
    """A run's state: what it trains (``model``; ``net`` is what the steps call: DDP- or compile-wrapped, or
    ``model``), with what, on which data, where its files go and where it stands. ``config``: the run's
    config as a plain dict, stored in every checkpoint; ``selected_on``: the validation list ``best.pth``
    names; ``segment_seconds``: the training clips' median segment spacing (rank 0), kept for streaming."""

    model: TSN
    net: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    mix_rng: np.random.Generator
    ema: WeightAverage | None
    train_loader: DataLoader
    val_loader: DataLoader
    class_names: list[str]
    info: DistInfo
    work_dir: Path
    recipe: Recipe
    config: dict[str, Any]
    selected_on: str
    val_is_test: bool
    segment_seconds: float | None
    start_epoch: int = 0
    best_top1: float = -1.0
    last_val: EpochMetrics | None = None


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


def truncate_jsonl(path: Path, last_epoch: int) -> None:
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


def training_net(model: TSN, info: DistInfo, compile_model: bool) -> nn.Module:
    """What the training steps call: ``model`` wrapped in DDP under torchrun, compiled when asked."""
    net: nn.Module = model
    if info.distributed:
        net = DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    if compile_model:
        net = torch.compile(net)
    return net


def run_training(run: TrainingRun, progress: bool = True, stop_after_epoch: int | None = None) -> TrainResult:
    """Train ``run`` from its start epoch to ``recipe.epochs``; ``stop_after_epoch``: return once this many epochs
    are done, as a run cut short by a time limit would (a resumed run finishes it). Rank 0 writes the files."""
    info = run.info
    writer = _summary_writer(run.work_dir) if info.is_main else None
    skip_log = SkipLog(run.work_dir / "skipped.csv" if info.is_main else None)
    end_epoch = run.recipe.epochs if stop_after_epoch is None else min(stop_after_epoch, run.recipe.epochs)
    for epoch in range(run.start_epoch, end_epoch):
        run_epoch(run, epoch, writer, skip_log, progress)
        barrier(info)
    if writer is not None:
        if run.last_val is not None:
            image = confusion_matrix_image(run.last_val.confusion, run.class_names)
            writer.add_image("val/confusion_matrix", image, end_epoch, dataformats="HWC")
        writer.close()
    if skip_log.count:
        logger.warning("%d unreadable sample(s) were replaced; see %s", skip_log.count, run.work_dir / "skipped.csv")
    return TrainResult(end_epoch, max(run.best_top1, 0.0), run.last_val, run.work_dir)


def run_epoch(run: TrainingRun, epoch: int, writer: SummaryWriter | None, skip_log: SkipLog, progress: bool) -> None:
    """Epoch ``epoch`` (0-based): train, validate when due, step the schedule per epoch, then (rank 0) the
    metrics record, the checkpoints and the log line."""
    info, recipe = run.info, run.recipe
    started = time.time()
    set_loader_epoch(run.train_loader, epoch)
    first_lr = _current_lr(run.optimizer)  # the rate of this epoch's first step (the schedule set it)
    train_metrics, skipped, last_lr = train_one_epoch(run, epoch, progress)
    skip_log.add(gather_skipped(skipped, info), "train")
    val_metrics = None
    if (epoch + 1) % recipe.val_every == 0 or epoch + 1 == recipe.epochs:
        val_metrics, val_skipped = validate(run, epoch, progress)
        skip_log.add(gather_skipped(val_skipped, info), "val")
        run.last_val = val_metrics
    run.schedule.step_epoch(val_metrics.top1 if val_metrics is not None else None)
    is_best = val_metrics is not None and val_metrics.top1 > run.best_top1
    if is_best:
        run.best_top1 = val_metrics.top1
    if info.is_main:
        record = epoch_record(epoch + 1, train_metrics, val_metrics, (first_lr, last_lr), run.val_is_test,
                              time.time() - started)
        _append_jsonl(run.work_dir / "metrics.jsonl", record)
        _log_scalars(writer, record, epoch + 1)
    random_states = gather_objects((capture_rng_state(), generator_state(run.mix_rng)), info)  # every rank's
    if info.is_main:
        write_checkpoints(run, epoch + 1, is_best, random_states)
        log_epoch(epoch + 1, recipe.epochs, train_metrics, val_metrics, (first_lr, last_lr), time.time() - started)


def train_one_epoch(run: TrainingRun, epoch: int, progress: bool) -> tuple[EpochMetrics, list[SkippedVideo], float]:
    """One pass over the training loader; metrics accumulate on the device and sync once at the end.

    Returns the metrics, the videos skipped, and the (head) learning rate of the last step taken."""
    from tqdm import tqdm

    info, recipe, model = run.info, run.recipe, run.model
    run.net.train()
    meter = MetricAccumulator(len(run.class_names), info.device)
    skipped: list[SkippedVideo] = []
    # On CUDA the next batch is copied and normalised on a side stream while this step runs.
    batches = DevicePrefetcher(run.train_loader, info.device, tuple(model.spec.mean), tuple(model.spec.std),
                               recipe.channels_last)
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not (progress and info.is_main),
               dynamic_ncols=True, leave=False)
    last_lr = _current_lr(run.optimizer)
    for step, batch in enumerate(bar):
        skipped.extend(batch.skipped)
        clips, labels = batch.clips, batch.labels  # (B, T, C, H, W) float, normalised on the device
        logits, loss = compute_loss(run.net, model, clips, labels, recipe.loss, run.mix_rng, info.device)
        last_lr = _current_lr(run.optimizer)
        optimizer_step(loss, model, run.optimizer, run.scaler, recipe.clip_grad_norm)
        if run.ema is not None:
            run.ema.update(model)
        run.schedule.step_iteration()
        meter.update(logits.detach().float(), labels, loss.detach())
        if step % SYNC_EVERY == 0:
            # One host sync every SYNC_EVERY steps (not every step, which would stall the GPU queue).
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at epoch {epoch + 1} step {step}: lower train.lr "
                                         f"or set train.clip_grad_norm")
            if progress and info.is_main:
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{_current_lr(run.optimizer):.2g}")
    return meter.compute(), skipped, last_lr


def validate(run: TrainingRun, epoch: int, progress: bool) -> tuple[EpochMetrics, list[SkippedVideo]]:
    """The validation metrics after epoch ``epoch`` (synced across ranks) and this rank's skipped videos; the
    weight average is validated when the run keeps one (it is the model that is kept)."""
    recipe, model = run.recipe, run.model
    set_loader_epoch(run.val_loader, epoch)
    evaluated = run.ema.module if run.ema is not None else run.net
    metrics, predictions = evaluate(evaluated, run.val_loader, run.info.device, len(run.class_names),
                                    tuple(model.spec.mean), tuple(model.spec.std), recipe.loss.amp,
                                    progress=progress and run.info.is_main, channels_last=recipe.channels_last,
                                    clips_per_forward=recipe.clips_per_forward, on_nonfinite=recipe.on_nonfinite)
    return metrics, list(predictions.skipped)


def epoch_record(epoch: int, train: EpochMetrics, val: EpochMetrics | None, lrs: tuple[float, float],
                 val_is_test: bool, seconds: float) -> dict[str, Any]:
    """One line of ``metrics.jsonl``: epoch ``epoch`` (1-based), its train and val metrics (None: not
    validated), its first and last learning rate, and its seconds."""
    return {"epoch": epoch, "train_loss": train.loss, "train_top1": train.top1,
            "train_mean_class_accuracy": train.mean_class_accuracy,
            "val_loss": val.loss if val else None,
            "val_top1": val.top1 if val else None,
            "val_mean_class_accuracy": val.mean_class_accuracy if val else None,
            "lr": lrs[0], "lr_last": lrs[1],
            "train_samples": train.count, "val_samples": val.count if val else None,
            "val_skipped": val.skipped if val else None,
            "val_is_test_list": val_is_test,
            "seconds": round(seconds, 2)}


def log_epoch(epoch: int, epochs: int, train: EpochMetrics, val: EpochMetrics | None, lrs: tuple[float, float],
              seconds: float) -> None:
    """The log line of epoch ``epoch`` (1-based) of ``epochs``."""
    val_text = (f"val loss {val.loss:.4f} top1 {val.top1:.4f} mca {val.mean_class_accuracy:.4f} on {val.count} "
                f"videos" + (f" ({val.skipped} skipped)" if val.skipped else "")) if val else "no val"
    logger.info("epoch %d/%d: train loss %.4f top1 %.4f mca %.4f, %s, lr %.3g to %.3g, %.1fs", epoch, epochs,
                train.loss, train.top1, train.mean_class_accuracy, val_text, lrs[0], lrs[1], seconds)


def write_checkpoints(run: TrainingRun, epoch: int, is_best: bool,
                      random_states: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """``latest.pth`` after ``epoch`` epochs and, on a new best, ``best.pth`` first (rank 0)."""
    state = checkpoint_state(run, random_states, epoch)
    state["segment_seconds"] = run.segment_seconds
    # best first: latest.pth records the new best, so a kill between the two writes must leave
    # best.pth ahead of it (the resumed epoch writes both again), never behind it for good
    if is_best:
        # best.pth names the list it was chosen on, so that testing it on that list is flagged
        save_checkpoint({**state, "selected_on": run.selected_on}, run.work_dir / BEST, keep_previous=False)
    save_checkpoint(state, run.work_dir / LATEST)


def compute_loss(net: nn.Module, model: nn.Module, clips: torch.Tensor, labels: torch.Tensor,
                 recipe: LossRecipe, mix_rng: np.random.Generator,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``clips`` (B, T, C, H, W) float through ``net`` with the recipe's mixup, label
    smoothing and L1 on ``model``'s weights (under autocast for ``recipe.amp``) -> (logits (B, classes), loss)."""
    weights = torch.tensor(recipe.class_weights, device=device) if recipe.class_weights is not None else None
    with autocast_context(device, recipe.amp):
        if recipe.mixup_alpha > 0:
            mixed = mixup(clips, labels, recipe.mixup_alpha, mix_rng)
            logits = net(mixed.clips)
            loss = mixup_cross_entropy(logits.float(), mixed.labels_a, mixed.labels_b, mixed.lam,
                                       recipe.label_smoothing, weights)
        else:
            logits = net(clips)
            loss = cross_entropy(logits.float(), labels, recipe.label_smoothing, weights)
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


def checkpoint_state(run: TrainingRun, random_states: list[tuple[dict[str, Any], dict[str, Any]]],
                     epoch: int) -> dict[str, Any]:
    """What ``latest.pth`` and ``best.pth`` hold after ``epoch`` epochs; the weight average (with
    ``train.ema_decay``) is what ``tsn.checkpoint.inference_weights`` gives for testing.
    ``random_states``: per rank, (``capture_rng_state()``, the mixup generator's state). The config
    and the class names make the file enough to infer with (``tsn.evaluation.inference.load_trained``)."""
    extra = {"ema": run.ema.state_dict()} if run.ema is not None else {}
    return {**extra,
        "model": unwrap(run.model).state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.schedule.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": epoch,
        "best_top1": run.best_top1,
        "config": run.config,
        "class_names": list(run.class_names),
        "rng": [global_state for global_state, _ in random_states],  # one per rank
        "mixup_rng": [mixup_state for _, mixup_state in random_states],
    }


def resume_from_latest(run: TrainingRun, settings: dict[str, object]) -> tuple[int, float]:
    """Load ``latest.pth`` (or its previous copy when it is corrupt) into ``run``'s model, optimizer, schedule,
    scaler and weight average; returns (next epoch, best top-1). ``settings``: the config keys the checkpoint
    must have been trained with (``tsn.checkpoint.check_trained_with``).

    Each rank restores its own random states (``_restore_random_states``)."""
    work_dir = run.work_dir
    if not (work_dir / LATEST).exists() and not any(work_dir.glob("latest*.pth")):
        logger.warning("--resume: no checkpoint in %s, starting from scratch", work_dir)
        return 0, -1.0
    try:
        state, used = load_latest_good(work_dir, LATEST)
    except CheckpointError as err:
        raise CheckpointError(err.path, f"cannot resume: {err.reason}") from None
    net = unwrap(run.model)
    check_trained_with(state, used, {"model.consensus": net.consensus, "data.num_segments": net.num_segments,
                                        **settings})
    load_state_dict_flexible(net, state["model"], strict=True)
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    _restore_random_states(state, used, run.mix_rng, run.info, run.recipe.seed)
    if run.ema is not None:
        if "ema" not in state:
            raise CheckpointError(used, "cannot resume with train.ema_decay: the checkpoint has no weight average")
        run.ema.load_state_dict(state["ema"])
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


def _summary_writer(work_dir: Path) -> SummaryWriter:
    """A tensorboardX writer under ``work_dir/tb``."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(work_dir / "tb"))


def _log_scalars(writer: SummaryWriter | None, record: dict[str, Any], epoch: int) -> None:
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
