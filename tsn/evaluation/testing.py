"""Evaluation reports: multi-view testing of a checkpoint, score fusion, and the files they write.

``O/metrics.json`` (top1, top5, mean_class_accuracy as fractions, num_videos, and the
``conventions`` behind them: mean class accuracy is the recall averaged over the classes present
in the labels, as scikit-learn's balanced accuracy), ``O/per_class.csv``,
``O/confusion_matrix.csv`` and ``.png``, ``O/scores.npy`` (video-level scores in list order; the
rows of videos that could not be read are NaN, left out of the metrics and listed in
``O/skipped.csv``), and ``O/report.html`` (``tsn.evaluation.html_report``: the same numbers, the clips
it got wrong and was least sure of, for a person).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from tsn.runtime.allocator import strategy as allocator_strategy
from tsn.data.dataset import ClipDataset, SkippedVideo
from tsn.build import same_list
from tsn.checkpoint import CheckpointError
from tsn.evaluation.html_report import TestPageInputs, write_test_page
from tsn.evaluation.evaluate import NONFINITE_REASON, NonFiniteError, evaluate
from tsn.evaluation.metrics import (
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
    """``scores (N, C)``, ``labels (N,)`` of the videos scored (no unread row) -> Report. A NaN or infinite
    score is a ValueError: the callers leave the unscored rows out (``scored_rows``) and report them."""
    if not np.isfinite(scores).all():
        raise ValueError("scores to report must be finite: leave the rows of unread videos out")
    scores_t = torch.from_numpy(scores)
    labels_t = torch.from_numpy(labels).to(torch.int64)
    count = int(labels.shape[0])
    cm = confusion_matrix(scores_t.argmax(dim=1), labels_t, num_classes).numpy() if count else \
        np.zeros((num_classes, num_classes), dtype=np.int64)
    hits = topk_correct(scores_t, labels_t, (1, 5)).tolist() if count else [0, 0]
    return Report(top1=hits[0] / count if count else 0.0, top5=hits[1] / count if count else 0.0,
                  mean_class_accuracy=mean_class_accuracy(cm), num_videos=count,
                  per_class=per_class_metrics(cm), confusion=cm)


class UnscoredRow(NamedTuple):
    """A list entry without scores: its row in ``scores.npy`` (NaN there), its path and why."""

    index: int
    path: str
    reason: str


def unscored_rows(dataset: ClipDataset, scored: np.ndarray, skipped: Sequence[SkippedVideo],
                  nonfinite: Sequence[tuple[int, str]] = ()) -> list[UnscoredRow]:
    """The rows of ``dataset``'s list that ``scored`` (bool ``(N,)``) leaves out, each with its reason: from the
    loader's ``skipped`` reports (unreadable) or ``nonfinite`` (list index, path: scores not finite)."""
    reasons = {item.path: item.reason for item in skipped}
    reasons.update({path: NONFINITE_REASON for _, path in nonfinite})
    rows = []
    for index in np.flatnonzero(~scored).tolist():
        path = dataset.path(index)
        rows.append(UnscoredRow(index, path, reasons.get(path, "not read")))
    return rows


# Written into metrics.json, so that its numbers can be compared with papers' without the README.
METRIC_CONVENTIONS = {
    "top_k": "a video is a hit when its label is among its k highest scores; exact ties go to the lower class id",
    "mean_class_accuracy": "recall averaged over the classes present in the labels (scikit-learn's "
                           "balanced_accuracy_score; mmaction2 also counts predicted but absent classes, as 0)",
    "views": "softmax probabilities averaged over a video's clips x crops",
    "skipped": "each list entry counts at most once; unreadable videos (and, with test.on_nonfinite: skip, videos "
               "whose scores were NaN or infinite) are left out of every metric, counted in num_skipped and listed "
               "in skipped.csv with their row of scores.npy",
}


def write_report(report: Report, class_names: Sequence[str], out_dir: Path, scores: np.ndarray | None = None,
                 unscored: Sequence[UnscoredRow] = (), train_skipped: Sequence[SkippedVideo] = (),
                 extra: dict | None = None) -> None:
    """Write the report files under ``out_dir`` (see the module docstring); ``unscored``: the list's rows left
    out (``skipped.csv``); ``train_skipped``: training videos passed over (the linear probe's
    ``train_skipped.csv``); ``extra``: more keys for ``metrics.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"top1": report.top1, "top5": report.top5, "mean_class_accuracy": report.mean_class_accuracy,
               "num_videos": report.num_videos, "num_skipped": len(unscored), **(extra or {}),
               "conventions": METRIC_CONVENTIONS}
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_per_class_csv(out_dir / "per_class.csv", class_names, report.per_class)
    write_confusion_csv(out_dir / "confusion_matrix.csv", report.confusion, class_names)
    if scores is not None:
        atomic_write(out_dir / "scores.npy", lambda handle: np.save(handle, scores))
    skipped_csv = out_dir / "skipped.csv"
    if unscored:
        atomic_write_csv(skipped_csv, list(UnscoredRow._fields), [list(row) for row in unscored])
    else:
        skipped_csv.unlink(missing_ok=True)  # an earlier run's list would name videos this one scored
    if train_skipped:
        atomic_write_csv(out_dir / "train_skipped.csv", ["path", "reason"], sorted(set(train_skipped)))
    # last: the data files are written even where the drawing fails (an environment from before
    # matplotlib became a requirement)
    plot_confusion_matrix(report.confusion, class_names, out_dir / "confusion_matrix.png")


def read_unscored_rows(path: Path) -> set[int]:
    """The rows of ``scores.npy`` that the ``skipped.csv`` at ``path`` lists (empty when there is no such file).
    A file without the ``index`` column (written before it existed) is a ValueError naming it."""
    if not path.is_file():
        return set()
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if "index" not in (reader.fieldnames or ()):
            raise ValueError(f"{path}: no index column (written by an older tools/test.py): test again")
        return {int(row["index"]) for row in reader}


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


@dataclass(frozen=True)
class TestSettings:
    """What ``evaluate_and_report`` is told besides the model and the loader: the ``checkpoint`` and
    ``test_list`` it names (the list also tells whether a ``best.pth`` was chosen on it), the ``views`` per
    video, autocast ``amp``, clips per forward, and what a non-finite score does."""

    checkpoint: Path
    test_list: Path
    views: int
    amp: str
    clips_per_forward: int
    on_nonfinite: str
    config_text: str = ""  # the run's config, shown on report.html


class ModelUnderTest(NamedTuple):
    """What ``run_test`` runs: clips -> scores, the class names of its outputs, the mean and std to normalise
    uint8 clips with (None: it takes them as they are), channels-last input, and the validation list a
    ``best.pth`` was chosen on (None: not chosen by validation), and the checkpoint's epoch (None: not recorded)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    class_names: list[str]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    channels_last: bool
    selected_on: str | None
    epoch: int | None = None


def evaluate_and_report(model: ModelUnderTest, loader: DataLoader, settings: TestSettings, out_dir: Path,
                        device: torch.device, progress: bool = True) -> Report:
    """Run ``model`` over ``loader`` (multi-view clips of a ``ClipDataset``'s list) and write the report files
    under ``out_dir``; unscored videos are logged."""
    dataset = loader.dataset
    num_classes = len(model.class_names)
    logger.info("testing %s on %d videos of %s, %d view(s) each, %d video(s) per batch", settings.checkpoint,
                len(dataset), settings.test_list, settings.views, loader.batch_size)
    logger.info("memory allocator: %s", allocator_strategy())
    chosen_here = model.selected_on is not None and same_list(Path(model.selected_on), settings.test_list)
    if chosen_here:
        logger.warning("%s was chosen as the best on this list (%s): its accuracy here is optimistic; test "
                       "latest.pth, or choose on a validation list carved from the training list",
                       settings.checkpoint, settings.test_list)
    _, predictions = evaluate(model.forward, loader, device, num_classes, model.mean, model.std, settings.amp,
                              progress=progress, channels_last=model.channels_last,
                              clips_per_forward=settings.clips_per_forward, on_nonfinite=settings.on_nonfinite)
    scores = np.full((len(dataset), num_classes), np.nan)  # unscored rows stay NaN
    scores[predictions.indices] = predictions.scores
    scored = np.zeros(len(dataset), dtype=bool)
    scored[predictions.indices] = True
    labels = np.array([record.label for record in dataset.records], dtype=np.int64)
    report = score_report(scores[scored], labels[scored], num_classes)
    unscored = unscored_rows(dataset, scored, predictions.skipped, predictions.nonfinite)
    write_report(report, model.class_names, out_dir, scores, unscored,
                 extra={"checkpoint_chosen_on_this_list": chosen_here})
    started = time.perf_counter()
    page = write_test_page(out_dir, model.class_names,
                           TestPageInputs(scores, labels, dataset, unscored, settings.checkpoint, settings.config_text,
                                          model.epoch),
                           report.per_class, report.confusion)
    logger.info("wrote %s in %.2f s", page, time.perf_counter() - started)
    for row in unscored:
        logger.warning("not scored: %s: %s", row.path, row.reason)
    return report


def check_class_names(checkpoint: Path, trained: Sequence[str], listed: Sequence[str]) -> None:
    """A ``CheckpointError`` when the model's ``trained`` class names are not the ``listed`` ones (what the
    list's labels mean)."""
    if list(listed) != list(trained):
        raise CheckpointError(checkpoint, f"trained on {len(trained)} classes ({_names(trained)}), but "
                                          f"data.classes lists {len(listed)} ({_names(listed)})")


def _names(names: Sequence[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


class FusedScores(NamedTuple):
    """Fused scores ``(N, C)`` (NaN rows where any input was unscored) and, per unscored row, why."""

    scores: np.ndarray
    unscored: dict[int, str]


def fuse_scores(score_files: Sequence[Path], weights: Sequence[float],
                names: Sequence[str] | None = None) -> FusedScores:
    """Weighted sum of video-level score files (e.g. RGB and flow streams); all in the same list order.

    Each file holds a (videos, classes) array as ``tools/test.py`` writes it. A file that is not such an
    array, or whose shape differs from the first file's, is a ValueError naming it. A row with NaN or infinite
    scores must be one the ``skipped.csv`` beside its file lists (a video that run could not score); any other
    is a ``NonFiniteError`` naming the videos (``names``: the list's paths, row numbers without them).
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
    unscored: dict[int, str] = {}
    for path, array in zip(score_files, arrays):
        if array.shape != shape:
            raise ValueError(f"{path}: scores of shape {array.shape}, expected {shape} like {score_files[0]}")
        rows = set(np.flatnonzero(~np.isfinite(array).all(axis=1)).tolist())
        listed = read_unscored_rows(path.parent / "skipped.csv")
        unexplained = sorted(rows - listed)
        if unexplained:
            raise NonFiniteError(f"scores in {path}",
                                 [names[i] if names is not None and i < len(names) else f"row {i}" for i in unexplained])
        for row in sorted(rows):
            unscored.setdefault(row, f"not scored in {path}")
    fused = sum(weight * array for weight, array in zip(weights, arrays))
    fused[sorted(unscored)] = np.nan
    return FusedScores(fused, unscored)
