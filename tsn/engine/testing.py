"""Evaluation reports: multi-view testing of a checkpoint, score fusion, and the files they write.

``O/metrics.json`` (top1, top5, mean_class_accuracy as fractions, num_videos, and the
``conventions`` behind them: mean class accuracy is the recall averaged over the classes present
in the labels, as scikit-learn's balanced accuracy), ``O/per_class.csv``,
``O/confusion_matrix.csv`` and ``.png``, ``O/scores.npy`` (video-level scores in list order; the
rows of videos that could not be read are NaN, left out of the metrics and listed in
``O/skipped.csv``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tsn.config import Config
from tsn.data.dataset import SkippedVideo
from tsn.engine.build import build_class_names, build_dataset, build_loader, list_path
from tsn.engine.checkpoint import CheckpointError
from tsn.engine.inference import load_trained
from tsn.engine.distributed import init_distributed
from tsn.engine.evaluate import evaluate
from tsn.engine.metrics import (
    ClassMetrics,
    confusion_matrix,
    mean_class_accuracy,
    per_class_metrics,
    plot_confusion_matrix,
    topk_correct,
    write_confusion_csv,
    write_per_class_csv,
)
from tsn.fileio import atomic_write, atomic_write_csv, atomic_write_text

logger = logging.getLogger("tsn.test")


@dataclass(frozen=True)
class Report:
    """Metrics of a set of video-level scores against their labels."""

    top1: float
    top5: float
    mean_class_accuracy: float
    num_videos: int
    per_class: ClassMetrics
    confusion: np.ndarray


def score_report(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> Report:
    """``scores (N, C)``, ``labels (N,)`` -> Report; rows with NaN scores (unread videos) are left out."""
    keep = ~np.isnan(scores).any(axis=1)
    scores_t = torch.from_numpy(scores[keep])
    labels_t = torch.from_numpy(labels[keep]).to(torch.int64)
    count = int(keep.sum())
    cm = confusion_matrix(scores_t.argmax(dim=1), labels_t, num_classes).numpy() if count else \
        np.zeros((num_classes, num_classes), dtype=np.int64)
    hits = topk_correct(scores_t, labels_t, (1, 5)).tolist() if count else [0, 0]
    return Report(top1=hits[0] / count if count else 0.0, top5=hits[1] / count if count else 0.0,
                  mean_class_accuracy=mean_class_accuracy(cm), num_videos=count,
                  per_class=per_class_metrics(cm), confusion=cm)


# Written into metrics.json, so that its numbers can be compared with papers' without the README.
METRIC_CONVENTIONS = {
    "top_k": "a video is a hit when its label is among its k highest scores; exact ties go to the lower class id",
    "mean_class_accuracy": "recall averaged over the classes present in the labels (scikit-learn's "
                           "balanced_accuracy_score; mmaction2 also counts predicted but absent classes, as 0)",
    "views": "softmax probabilities averaged over a video's clips x crops",
    "skipped": "unreadable videos are left out of every metric and listed in skipped.csv",
}


def write_report(report: Report, class_names: Sequence[str], out_dir: Path, scores: np.ndarray | None = None,
                 skipped: Sequence[SkippedVideo] = ()) -> None:
    """Write the report files under ``out_dir`` (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"top1": report.top1, "top5": report.top5, "mean_class_accuracy": report.mean_class_accuracy,
               "num_videos": report.num_videos, "conventions": METRIC_CONVENTIONS}
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_per_class_csv(out_dir / "per_class.csv", class_names, report.per_class)
    write_confusion_csv(out_dir / "confusion_matrix.csv", report.confusion, class_names)
    if scores is not None:
        atomic_write(out_dir / "scores.npy", lambda handle: np.save(handle, scores))
    if skipped:
        atomic_write_csv(out_dir / "skipped.csv", ["path", "reason"], sorted(set(skipped)))
    # last: the data files are written even where the drawing fails (an environment from before
    # matplotlib became a requirement)
    plot_confusion_matrix(report.confusion, class_names, out_dir / "confusion_matrix.png")


def format_per_class_table(report: Report, class_names: Sequence[str]) -> str:
    """A plain-text table: class, precision, recall, F1, support, and the overall metrics below it."""
    width = max(8, *(len(name) for name in class_names))
    lines = [f"{'class':<{width}}  precision  recall      f1  support"]
    pc = report.per_class
    for i, name in enumerate(class_names):
        lines.append(f"{name:<{width}}  {pc.precision[i]:9.3f}  {pc.recall[i]:6.3f}  {pc.f1[i]:6.3f}  "
                     f"{int(pc.support[i]):7d}")
    lines.append(f"top1 {report.top1:.4f}  top5 {report.top5:.4f}  mean class accuracy "
                 f"{report.mean_class_accuracy:.4f}  videos {report.num_videos}")
    return "\n".join(lines)


def videos_per_test_batch(batch_size: int, views: int, clips_per_forward: int) -> int:
    """Videos per test batch: ``batch_size`` at most, and no more than ``clips_per_forward`` clips in
    all (at least one video): a loader batch holds every view of its videos, and with 25 clips x 10
    crops a batch of 4 videos of 8 frames at 224 px is 1.2 GB as uint8, times the batches in flight."""
    return max(1, min(batch_size, clips_per_forward // views))


def run_test(cfg: Config, checkpoint: Path, out_dir: Path, list_file: Path | None = None,
             num_clips: int | None = None, crops: int | None = None, device: str = "auto",
             progress: bool = True, batch_size: int | None = None) -> Report:
    """Test ``checkpoint`` on ``list_file`` (default ``data.test_list``) with clips x crops views; writes the files.

    ``batch_size``: videos per loader batch (default: ``videos_per_test_batch`` of ``data.batch_size``)."""
    info = init_distributed(device)
    if info.distributed:
        raise RuntimeError("tools/test.py runs in one process; launch it without torchrun")
    trained = load_trained(checkpoint, cfg, info.device)
    class_names = trained.class_names
    listed = build_class_names(cfg)  # what the list's labels mean
    if listed != class_names:
        raise CheckpointError(checkpoint, f"trained on {len(class_names)} classes ({_names(class_names)}), but "
                                          f"data.classes lists {len(listed)} ({_names(listed)})")
    dataset = build_dataset(cfg, "test", len(class_names), list_file=list_file, num_clips=num_clips, crops=crops)
    views = dataset.num_clips * (crops if crops is not None else cfg.test.crops)
    batch_size = batch_size or videos_per_test_batch(cfg.data.batch_size, views, cfg.test.clips_per_forward)
    loader = build_loader(cfg, dataset, train=False, distributed=False, batch_size=batch_size)
    model = trained.model
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    spec = model.spec
    logger.info("testing %s on %d videos of %s, %d view(s) each, %d video(s) per batch", checkpoint, len(dataset),
                list_file or list_path(cfg, "test"), views, batch_size)
    _, predictions = evaluate(model, loader, info.device, len(class_names), tuple(spec.mean), tuple(spec.std),
                              cfg.train.amp, progress=progress, channels_last=cfg.train.channels_last,
                              clips_per_forward=cfg.test.clips_per_forward)
    scores = np.full((len(dataset), len(class_names)), np.nan)
    scores[predictions.indices] = predictions.scores
    labels = np.array([record.label for record in dataset.records], dtype=np.int64)
    report = score_report(scores, labels, len(class_names))
    write_report(report, class_names, out_dir, scores, predictions.skipped)
    for item in sorted(set(predictions.skipped)):
        logger.warning("not scored: %s: %s", item.path, item.reason)
    return report


def _names(names: Sequence[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def fuse_scores(score_files: Sequence[Path], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of video-level score files (e.g. RGB and flow streams); all in the same list order.

    Each file holds a (videos, classes) array as ``tools/test.py`` writes it. A file that is not
    such an array, or whose shape differs from the first file's, is a ValueError naming it.
    """
    if len(score_files) != len(weights):
        raise ValueError(f"{len(score_files)} score files but {len(weights)} weights")
    arrays = []
    for path in score_files:
        try:
            array = np.load(path)
        except (ValueError, OSError, EOFError) as err:  # not a .npy file (or a pickle, refused)
            raise ValueError(f"{path}: not a .npy score array ({err})") from None
        if array.ndim != 2:
            raise ValueError(f"{path}: expected scores of shape (videos, classes), got {array.shape}")
        arrays.append(array)
    shape = arrays[0].shape
    for path, array in zip(score_files, arrays):
        if array.shape != shape:
            raise ValueError(f"{path}: scores of shape {array.shape}, expected {shape} like {score_files[0]}")
    return sum(weight * array for weight, array in zip(weights, arrays))
