"""Inference over a loader: per-video scores from one or many views, and the metrics of them.

Views (temporal clips x spatial crops) are averaged as softmax probabilities, as mmaction2's
``average_clips='prob'``: a confident view cannot drown the others with a large logit.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tsn.data.dataset import ClipBatch, SkippedVideo
from tsn.data.loader import EpochSampler
from tsn.errors import UserError
from tsn.evaluation.metrics import EpochMetrics, MetricAccumulator
from tsn.data.prefetch import channels_last_clips
from tsn.layout import normalize_clips


# What to do with a video that was read but got NaN or infinite scores or features: "raise" (the default: a
# diverged model, an fp16 overflow or a corrupt checkpoint must not pass as a result) or "skip" (leave it out
# of every metric and report it, as an unreadable video).
ON_NONFINITE = ("raise", "skip")
NONFINITE_REASON = "non-finite scores (NaN or infinity)"
# The videos a NonFiniteError names one line each; the count says how many more there were.
NONFINITE_SHOWN = 20


class NonFiniteError(UserError, ValueError):
    """Videos that were read gave NaN or infinite scores (or features): one line for the count and the likely
    causes, then one line per video (``NONFINITE_SHOWN`` at most)."""

    def __init__(self, what: str, paths: Sequence[str], total: int | None = None) -> None:
        total = len(paths) if total is None else total
        lines = [f"{what} are NaN or infinite for {total} video(s) that were read: a diverged model (see the "
                 f"training loss), an fp16 overflow (train.amp: bf16 or none) or a corrupt checkpoint"]
        lines += [f"{path}: {what} not finite" for path in list(paths)[:NONFINITE_SHOWN]]
        if len(paths) > NONFINITE_SHOWN:
            lines.append(f"... and {len(paths) - NONFINITE_SHOWN} more")
        super().__init__("\n".join(lines))
        self.paths = tuple(paths)


def check_on_nonfinite(value: str) -> str:
    if value not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {value!r}")
    return value


@dataclass(frozen=True)
class Predictions:
    """The scores of the list entries counted in the metrics, in loader order: scores ``(N, num_classes)``
    (float64), labels ``(N,)``, list indices ``(N,)`` (each at most once); ``skipped``: the unreadable videos
    passed over (one report per pass); ``nonfinite``: videos read whose scores were NaN or infinite, left
    out (``on_nonfinite="skip"``), with their list indices."""

    scores: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    skipped: tuple[SkippedVideo, ...]
    nonfinite: tuple[tuple[int, str], ...] = ()


def autocast_context(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` ("bf16" or "fp16") on CUDA; a no-op for "none" and on the CPU,
    where reduced precision is slower than float32 on most processors."""
    if amp == "none" or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def batch_to_device(batch: ClipBatch, device: torch.device, mean: tuple[float, ...],
                    std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 clips and labels to ``device`` (non-blocking from pinned memory), clips normalised there."""
    clips = batch.clips.to(device, non_blocking=True)
    labels = batch.labels.to(device, non_blocking=True)
    if not clips.is_floating_point():
        clips = normalize_clips(clips, mean, std)
    return clips, labels


def chunked_forward(model: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor,
                    clips_per_forward: int | None = None, channels_last: bool = False,
                    mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> torch.Tensor:
    """``model`` over clips ``(N, T, C, H, W)`` in chunks of at most ``clips_per_forward`` clips (None: all at
    once) -> ``(N, ...)``, each chunk laid out channels-last first when asked (``channels_last_clips``).

    uint8 clips are normalised with ``mean`` and ``std`` one chunk at a time, so that only one chunk
    is ever float: the 250 views of 8 frames of one video at 224 px are 301 MB as uint8 and 1.2 GB
    as float32. Without ``mean`` and ``std`` they reach the model as uint8 (an exported model,
    ``tsn.evaluation.deployed.ExportedTSN``, normalises them itself). Eval mode has no cross-sample dependence,
    so the result equals one pass over all N clips (up to floating-point rounding: kernels may sum in
    another order for another batch size)."""
    if (mean is None) != (std is None):
        raise ValueError("give both the mean and the std to normalise uint8 clips with, or neither")
    step = clips.shape[0] if clips_per_forward is None else max(1, clips_per_forward)
    outputs = []
    for start in range(0, clips.shape[0], step):
        chunk = clips[start:start + step]  # (n, T, C, H, W)
        if not chunk.is_floating_point() and mean is not None and std is not None:
            chunk = normalize_clips(chunk, mean, std)
        outputs.append(model(channels_last_clips(chunk) if channels_last else chunk))
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def view_scores(model: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor,
                clips_per_forward: int | None = None, channels_last: bool = False, mean: tuple[float, ...] | None = None,
                std: tuple[float, ...] | None = None,
                mirror: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Video scores from ``clips`` (B, T, C, H, W) -> logits (B, classes), or from several views
    (B, V, T, C, H, W) -> mean softmax probability over the V views (B, classes); the model sees at
    most ``clips_per_forward`` clips at once, normalised chunk by chunk when uint8 (``chunked_forward``).

    ``mirror`` (``ClipDataset.view_mirror``): which views are mirrored, bool ``(V,)``, and the class each
    class becomes in a mirror, int64 ``(classes,)``: a mirrored view's probability of ``mirror[c]`` counts for
    class c ("moving left" seen in a mirror is "moving right")."""
    if clips.dim() == 5:
        return chunked_forward(model, clips, clips_per_forward, channels_last, mean, std)
    batch, views = clips.shape[:2]
    logits = chunked_forward(model, clips.flatten(0, 1), clips_per_forward, channels_last, mean, std)  # (B*V, classes)
    probs = logits.float().softmax(dim=1).view(batch, views, -1)  # (B, V, classes)
    if mirror is not None:
        mirrored, classes = (part.to(probs.device) for part in mirror)
        probs = torch.where(mirrored.view(1, -1, 1), probs[:, :, classes], probs)  # (B, V, classes)
    return probs.mean(dim=1)


def _counted(loader: DataLoader, start: int, count: int) -> torch.Tensor:
    """Bool ``(count,)``: which of this rank's samples ``start .. start + count - 1`` are list entries of their
    own (all but ``DistributedSampler``'s padding repeats, so that every video counts once across ranks)."""
    sampler = loader.sampler
    if not isinstance(sampler, EpochSampler):
        return torch.ones(count, dtype=torch.bool)
    return torch.tensor([not sampler.is_padding(start + i) for i in range(count)], dtype=torch.bool)


def video_path(loader: DataLoader, index: int) -> str:
    """The path of list entry ``index`` of the loader's dataset (its list index where it has no paths)."""
    path = getattr(loader.dataset, "path", None)
    return path(index) if callable(path) else f"list entry {index}"


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, device: torch.device,
             num_classes: int, mean: tuple[float, ...] | None, std: tuple[float, ...] | None, amp: str = "none",
             progress: bool = False, channels_last: bool = False,
             clips_per_forward: int | None = None, on_nonfinite: str = "raise") -> tuple[EpochMetrics, Predictions]:
    """Run ``model`` in eval mode over ``loader``: metrics (synced across ranks) and this rank's scores.

    Each list entry counts at most once: ``DistributedSampler``'s padding repeats are left out, and so is a
    sample that stands in for an unreadable video (``ClipBatch.replaced``: its own video counts at its own
    index), which counts as skipped instead. A video read whose scores are NaN or infinite raises
    ``NonFiniteError`` on every rank (``on_nonfinite="raise"``), or is left out and reported (``"skip"``).

    The loss is the cross-entropy of the scores (of the logits for one view, of the averaged
    probabilities for several). ``channels_last``, ``clips_per_forward``, ``mean`` and ``std`` (None: the
    model takes uint8 clips): see ``chunked_forward``.
    """
    from tqdm import tqdm

    check_on_nonfinite(on_nonfinite)
    if isinstance(model, nn.Module):
        model.eval()
    view_mirror = getattr(loader.dataset, "view_mirror", None)
    mirror = view_mirror() if callable(view_mirror) else None
    meter = MetricAccumulator(num_classes, device)
    scores, labels, indices, skipped = [], [], [], []
    nonfinite: list[tuple[int, str]] = []
    seen = 0  # this rank's samples so far, to tell DistributedSampler's padding repeats apart
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        clips = batch.clips.to(device, non_blocking=True)  # uint8: normalised chunk by chunk
        is_prob = clips.dim() == 6  # several views: their probabilities were averaged
        with autocast_context(device, amp):
            out = view_scores(model, clips, clips_per_forward, channels_last, mean, std, mirror).float()
        # the model runs on the repeats and stand-ins too (every rank makes as many forwards); only counting skips them
        own = _counted(loader, seen, len(batch.indices))
        seen += len(batch.indices)
        replaced = own & batch.replaced
        out_host = out.double().cpu()  # (B, classes)
        finite = torch.isfinite(out_host).all(dim=1)
        bad = own & ~replaced & ~finite
        nonfinite += [(int(i), video_path(loader, int(i))) for i in batch.indices[bad].tolist()]
        keep = own & ~replaced & finite
        meter.leave_out(skipped=int(replaced.sum()), nonfinite=int(bad.sum()))
        if keep.any():
            kept, target = out[keep.to(out.device)], batch.labels[keep].to(device)
            loss = nn.functional.nll_loss(kept.clamp_min(1e-12).log(), target) if is_prob else \
                nn.functional.cross_entropy(kept, target)
            meter.update(kept, target, loss)
        scores.append(out_host[keep])
        labels.append(batch.labels[keep])
        indices.append(batch.indices[keep])
        skipped.extend(batch.skipped)
    metrics = meter.compute()  # every rank: the non-finite count below is the same on all of them
    if metrics.nonfinite and on_nonfinite == "raise":
        raise NonFiniteError("scores", [path for _, path in nonfinite], metrics.nonfinite)
    return metrics, _predictions(scores, labels, indices, skipped, nonfinite, num_classes)


def _predictions(scores: list[torch.Tensor], labels: list[torch.Tensor], indices: list[torch.Tensor],
                 skipped: list[SkippedVideo], nonfinite: list[tuple[int, str]], num_classes: int) -> Predictions:
    """The batches' kept scores ``(b, num_classes)``, labels and indices ``(b,)`` joined into ``Predictions``."""
    return Predictions(
        scores=torch.cat(scores).numpy() if scores else np.zeros((0, num_classes)),
        labels=torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64),
        indices=torch.cat(indices).numpy() if indices else np.zeros(0, dtype=np.int64),
        skipped=tuple(skipped),
        nonfinite=tuple(nonfinite),
    )
