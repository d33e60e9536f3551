"""Classification metrics: confusion matrix, top-k, mean class accuracy, per-class P/R/F1, reports.

Convention: ``cm[t, p]`` counts samples of true class ``t`` predicted as ``p`` (rows = truth).
Everything that divides is safe: a class never predicted has precision 0.0, a class absent
from the labels has recall 0.0 and support 0, and F1 is 0.0 when precision + recall is 0
(the seed article divided by zero there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from tsn.runtime.distributed import all_reduce_sum
from tsn.fileio import atomic_write, atomic_write_csv


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``preds``, ``labels``: int ``(N,)`` class ids -> int64 ``(num_classes, num_classes)``.

    Computed on ``preds.device`` without a host sync (an accumulating ``index_put_``, which is
    deterministic on CUDA). Ids are range-checked on the CPU only: on CUDA the check would cost
    a sync per batch, and there the ids come from checked lists and an argmax.
    """
    preds = preds.reshape(-1).to(torch.int64)
    labels = labels.reshape(-1).to(device=preds.device, dtype=torch.int64)
    if preds.shape != labels.shape:
        raise ValueError(f"preds and labels differ in length: {preds.numel()} vs {labels.numel()}")
    if preds.device.type == "cpu" and preds.numel() > 0:
        low = int(torch.minimum(preds.min(), labels.min()))
        high = int(torch.maximum(preds.max(), labels.max()))
        if low < 0 or high >= num_classes:
            raise ValueError(f"class ids must lie in [0, {num_classes}), got values in [{low}, {high}]")
    cm = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=preds.device)
    flat = labels * num_classes + preds  # (N,) index of cell (t, p) in the flattened matrix
    cm.index_put_((flat,), torch.ones_like(flat), accumulate=True)
    return cm.view(num_classes, num_classes)  # (num_classes, num_classes): rows true, cols predicted


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """``scores (N, num_classes)``, ``labels (N,)`` -> int64 ``(len(ks),)`` counts of samples whose
    label is among the ``k`` highest scores, on the scores' device. ``k`` above ``num_classes``
    is capped at ``num_classes`` (then every sample counts).

    Exact ties go to the lower class index, as ``argmax`` (and so the confusion matrix) breaks
    them: a stable descending sort, where ``topk`` leaves the order of equal scores unspecified.
    """
    num_classes = scores.shape[1]
    kmax = min(max(ks), num_classes)
    top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :kmax]  # (N, kmax), best first
    hits = top == labels.to(top.device).view(-1, 1)  # (N, kmax)
    counts = [hits[:, : min(k, num_classes)].any(dim=1).sum() for k in ks]
    return torch.stack(counts).to(torch.int64)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction in [0, 1] of samples whose label is among the top ``k`` scores (0.0 when empty)."""
    if labels.numel() == 0:
        return 0.0
    return int(topk_correct(scores, labels, (k,))[0]) / labels.numel()


def _as_numpy(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    return cm


def mean_class_accuracy(cm: torch.Tensor | np.ndarray) -> float:
    """Mean over the classes present in the labels (row sum > 0) of their recall; 0.0 if none."""
    cm = _as_numpy(cm)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float(np.mean(np.diag(cm)[present] / support[present]))


@dataclass(frozen=True)
class ClassMetrics:
    """Per-class arrays of length C: precision, recall, f1 (float64) and support (int64)."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, 0.0 where ``den`` is 0."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def per_class_metrics(cm: torch.Tensor | np.ndarray) -> ClassMetrics:
    """Precision ``tp / predicted``, recall ``tp / support``, F1, support, per class of ``cm``.

    0.0 instead of a division by zero: precision of a class never predicted, recall of a class
    absent from the labels, F1 where precision + recall is 0.
    """
    cm = _as_numpy(cm).astype(np.int64)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support.astype(np.float64))
    f1 = _safe_divide(2.0 * precision * recall, precision + recall)
    return ClassMetrics(precision=precision, recall=recall, f1=f1, support=support)


def write_per_class_csv(path: str | os.PathLike[str], class_names: Sequence[str], metrics: ClassMetrics) -> None:
    """CSV with header ``class,precision,recall,f1,support``, one row per class in label order.

    Fractions are written with 6 decimals, support as an integer.
    """
    if len(class_names) != len(metrics.support):
        raise ValueError(f"{len(class_names)} class names for {len(metrics.support)} classes")
    rows = [
        [name, f"{metrics.precision[i]:.6f}", f"{metrics.recall[i]:.6f}", f"{metrics.f1[i]:.6f}",
         int(metrics.support[i])]
        for i, name in enumerate(class_names)
    ]
    atomic_write_csv(path, ["class", "precision", "recall", "f1", "support"], rows)


def write_confusion_csv(
    path: str | os.PathLike[str], cm: torch.Tensor | np.ndarray, class_names: Sequence[str]
) -> None:
    """CSV of counts: header ``true/pred,<name 0>,...``, then one row per true class."""
    cm = _as_numpy(cm)
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}-class confusion matrix")
    rows = [[name, *(int(count) for count in row)] for name, row in zip(class_names, cm)]
    atomic_write_csv(path, ["true/pred", *class_names], rows)


def _confusion_figure(cm: np.ndarray, class_names: Sequence[str]):  # -> matplotlib Figure
    """Row-normalised heat map (colour = fraction of the true class), counts written in small matrices."""
    from matplotlib.figure import Figure  # imported when drawn, not with tsn: it is slow to import

    num = cm.shape[0]
    side = min(max(4.0, 0.4 * num + 2.5), 40.0)
    fig = Figure(figsize=(side, side), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    fractions = _safe_divide(cm.astype(np.float64), np.broadcast_to(rows, cm.shape))
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of the true class")
    if num <= 50:  # beyond that tick labels overlap; the CSV holds the names
        ax.set_xticks(range(num), labels=list(class_names), rotation=90, fontsize=8)
        ax.set_yticks(range(num), labels=list(class_names), fontsize=8)
    if num <= 30:
        for t in range(num):
            for p in range(num):
                colour = "white" if fractions[t, p] > 0.5 else "black"
                ax.text(p, t, str(int(cm[t, p])), ha="center", va="center", color=colour, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    return fig


def confusion_matrix_image(cm: torch.Tensor | np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The confusion-matrix plot as uint8 RGB ``(H, W, 3)`` (for TensorBoard)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = _confusion_figure(_as_numpy(cm), class_names)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # (H, W, 4)
    return np.ascontiguousarray(rgba[:, :, :3])  # (H, W, 3)


def plot_confusion_matrix(cm: torch.Tensor | np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str]) -> None:
    """Write the confusion-matrix plot as a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(_confusion_figure(_as_numpy(cm), class_names))
    atomic_write(path, canvas.print_png)


@dataclass(frozen=True)
class EpochMetrics:
    """Synced totals of one epoch: mean loss, top-1/top-5 fractions, sample count, confusion matrix (CPU), and
    the list entries left out of them: ``skipped`` (unreadable videos) and ``nonfinite`` (videos read whose
    scores were NaN or infinite)."""

    loss: float
    top1: float
    top5: float
    count: int
    confusion: torch.Tensor
    skipped: int = 0
    nonfinite: int = 0

    @property
    def mean_class_accuracy(self) -> float:
        """Mean recall over the classes present (``mean_class_accuracy`` of the confusion matrix)."""
        return mean_class_accuracy(self.confusion)


class MetricAccumulator:
    """Sums loss, top-1/top-5 hits, sample count and the confusion matrix on the device.

    ``update`` never syncs with the host; ``compute`` reduces once across ranks (one
    ``all_reduce`` when torch.distributed is initialised) and copies to the host once. Under
    DDP every rank must call ``compute``. It counts what it is given: ``tsn.evaluation.evaluate``
    leaves out the repeats that a DistributedSampler pads the last batch with.
    """

    def __init__(self, num_classes: int, device: torch.device | str) -> None:
        self.num_classes = num_classes
        self.device = torch.device(device)
        # float64 so that one packed all_reduce carries counts exactly (below 2**53) and the loss sum
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._hits = torch.zeros(2, dtype=torch.int64, device=self.device)  # top-1, top-5
        self._count = torch.zeros((), dtype=torch.int64, device=self.device)
        self._left_out = [0, 0]  # host counts of skipped and non-finite entries (known on the host already)
        self._confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=self.device)
        self._result: EpochMetrics | None = None

    def update(self, scores: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        """Add a batch: ``scores (B, num_classes)``, ``labels (B,)``, ``loss`` the batch-mean loss."""
        if self._result is not None:
            raise RuntimeError("MetricAccumulator.update after compute(); start a new accumulator")
        scores = scores.detach()
        labels = labels.to(scores.device)
        batch = labels.shape[0]
        if loss is not None:
            self._loss_sum += loss.detach().to(torch.float64) * batch
        self._hits += topk_correct(scores, labels, (1, 5))
        self._count += batch
        self._confusion += confusion_matrix(scores.argmax(dim=1), labels, self.num_classes)

    def leave_out(self, skipped: int = 0, nonfinite: int = 0) -> None:
        """Count list entries left out of the metrics: ``skipped`` unreadable videos, ``nonfinite`` videos
        whose scores were NaN or infinite."""
        self._left_out[0] += skipped
        self._left_out[1] += nonfinite

    def compute(self) -> EpochMetrics:
        """Sync once across ranks and return the epoch's metrics (cached: later calls do not sync)."""
        if self._result is None:
            packed = torch.cat(
                [
                    self._loss_sum.view(1),
                    self._hits.to(torch.float64),
                    self._count.to(torch.float64).view(1),
                    torch.tensor(self._left_out, dtype=torch.float64, device=self.device),
                    self._confusion.to(torch.float64).view(-1),
                ]
            )  # (1 + 2 + 1 + 2 + C*C,)
            packed = all_reduce_sum(packed).cpu()
            loss_sum, top1, top5, count, skipped, nonfinite = (float(v) for v in packed[:6])
            confusion = packed[6:].round().to(torch.int64).view(self.num_classes, self.num_classes)
            n = int(count)
            self._result = EpochMetrics(
                loss=loss_sum / n if n else 0.0,
                top1=top1 / n if n else 0.0,
                top5=top5 / n if n else 0.0,
                count=n,
                confusion=confusion,
                skipped=int(round(skipped)),
                nonfinite=int(round(nonfinite)),
            )
        return self._result
