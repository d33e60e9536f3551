"""Training losses: cross-entropy with label smoothing and class weights, mixup of clips and labels, L1 on weights."""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MixupBatch(NamedTuple):
    """A mixed batch: ``clips = lam * x + (1 - lam) * x[perm]``, ``labels_b = labels[perm]``."""

    clips: torch.Tensor
    labels_a: torch.Tensor
    labels_b: torch.Tensor
    lam: float


def mixup(clips: torch.Tensor, labels: torch.Tensor, alpha: float, rng: np.random.Generator) -> MixupBatch:
    """Mix each clip with another clip of the same batch (Zhang et al., 2018).

    ``clips``: float ``(B, T, C, H, W)`` (normalised; any float shape with B first works),
    ``labels``: int64 ``(B,)``. One ``lam ~ Beta(alpha, alpha)`` for the whole batch and one
    permutation of the batch, both drawn from ``rng`` (numpy, so that its state can be saved
    in a checkpoint and the draws are identical on CPU and CUDA). The whole clip, every frame
    of it, is mixed with the same ``lam``.
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    if not clips.is_floating_point():
        raise TypeError(f"mixup needs float clips (normalise first), got {clips.dtype}")
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(clips.shape[0])).to(clips.device)
    mixed = lam * clips + (1.0 - lam) * clips[perm]
    return MixupBatch(clips=mixed, labels_a=labels, labels_b=labels[perm], lam=lam)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                  class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``logits (B, num_classes)`` against ``labels (B,)``.

    With smoothing ``s`` over ``N`` classes the target is ``1 - s + s/N`` for the true class and
    ``s/N`` elsewhere, so the per-sample loss is
    ``(1 - s) * -log p_y + (s / N) * sum_c -log p_c`` (torch's ``label_smoothing``).
    ``class_weights (num_classes,)``: each sample's loss times its class's weight, then the mean over
    the batch (divided by B, not by the weights' sum, so that a batch of one class is weighted too and an
    epoch's expected loss is that of class-balanced sampling; see ``inverse_frequency_weights``).
    """
    if class_weights is None:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    per_sample = F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="none")  # (B,)
    return (per_sample * class_weights.to(per_sample)[labels]).mean()


def inverse_frequency_weights(labels: Sequence[int], num_classes: int) -> tuple[float, ...] | None:
    """Per-class loss weights ``N / (K * n_c)`` for ``N`` training labels of ``K`` present classes (``n_c`` of
    class ``c``; 0 for a class without any), so that every present class carries the same total weight and
    the mean weight over the training videos is 1. None when the classes are already balanced (every weight
    1: the unweighted loss, computed as before)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    present = counts > 0
    if not present.any():
        raise ValueError("no training labels to weigh classes by")
    if (counts[present] == counts[present][0]).all():
        return None
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return tuple(float(w) for w in weights)


def mixup_cross_entropy(
    logits: torch.Tensor,
    labels_a: torch.Tensor,
    labels_b: torch.Tensor,
    lam: float,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``lam * CE(logits, labels_a) + (1 - lam) * CE(logits, labels_b)`` (both mean over the batch, each sample
    weighted by its class in ``labels_a`` or ``labels_b``, see ``cross_entropy``).

    Equal to cross-entropy against the mixed (and smoothed) target, since CE is linear in it.
    """
    loss_a = cross_entropy(logits, labels_a, label_smoothing, class_weights)
    loss_b = cross_entropy(logits, labels_b, label_smoothing, class_weights)
    return lam * loss_a + (1.0 - lam) * loss_b


def l1_penalty(params: nn.Module | Iterable[torch.Tensor], weight: float) -> torch.Tensor:
    """``weight * sum(|p|)``, a scalar tensor on the parameters' device.

    Given a module: over its trainable weight tensors only (``ndim >= 2``: convolution and
    linear weights), the same parameters that receive weight decay; biases and normalisation
    scales are left alone, and frozen parameters add nothing. Given an iterable: over exactly
    those tensors.
    """
    if isinstance(params, nn.Module):
        tensors = [p for p in params.parameters() if p.requires_grad and p.ndim >= 2]
    else:
        tensors = list(params)
    if not tensors:
        return torch.zeros(())
    # float32 sums so that mixed-dtype parameters (bf16 next to fp32) can be stacked
    total = torch.stack([t.abs().sum().float() for t in tensors]).sum()
    return weight * total
