"""K-fold cross-validation of a training recipe: fold lists, one train + test run per fold, the summary.

Folds come either as given list pairs (a data set's own protocol, e.g. UT-Interaction's two folds)
or from one list cut by ``assign_folds``: stratified by label, seeded, and, with a ``group``
regular expression, grouped, so that all videos whose paths give the same group (the first
capture group of the match, or the whole match) land in the same fold; a group is never split
(the videos of one actor or one source video must not be in train and test at once).

Each fold trains with the config as given but the fold's lists (``data.train_list``; the test
list as ``data.val_list``, validated only after the last epoch, so that nothing is chosen on the
test fold) and tests the *last* checkpoint with ``tools/test.py``'s multi-view protocol. Files:
``W/folds/`` (generated lists), ``W/fold<i>/`` (the training run, ``test/`` its report, ``probe/``
the linear probe's with ``probe=True``), ``W/cv.json`` (per fold and mean/std).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tsn.config import Config, ConfigError
from tsn.data.lists import VideoRecord, read_list, write_rawframe_list, write_video_list
from tsn.data.splits import assign_folds, group_of  # noqa: F401  (group_of: part of this module's interface)
from tsn.checkpoint import LATEST
from tsn.evaluation.build import run_test
from tsn.training.build import run_linear_probe, train
from tsn.fileio import atomic_write_text

logger = logging.getLogger("tsn.crossval")


@dataclass(frozen=True)
class FoldResult:
    """One fold's numbers: videos, test top-1 and mean class accuracy, seconds, and the probe's numbers."""

    fold: int
    train_videos: int
    test_videos: int
    top1: float
    mean_class_accuracy: float
    train_seconds: float
    test_seconds: float
    probe_top1: float | None = None
    probe_mean_class_accuracy: float | None = None


@dataclass(frozen=True)
class CrossValResult:
    """All folds and the mean and sample standard deviation of their test top-1 and mean class accuracy."""

    folds: tuple[FoldResult, ...]

    def mean_std(self, field: str) -> tuple[float, float]:
        values = np.array([getattr(fold, field) for fold in self.folds], dtype=np.float64)
        return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def write_fold_lists(records: Sequence[VideoRecord], assignment: np.ndarray, format: str,
                     out_dir: Path) -> list[tuple[Path, Path]]:
    """``out_dir/fold<i>_train.txt`` and ``fold<i>_test.txt`` (records in list order); returns the pairs."""
    write = write_rawframe_list if format == "rawframes" else write_video_list
    pairs = []
    for fold in range(int(assignment.max()) + 1):
        train_path, test_path = out_dir / f"fold{fold + 1}_train.txt", out_dir / f"fold{fold + 1}_test.txt"
        write([r for r, f in zip(records, assignment) if f != fold], train_path)
        write([r for r, f in zip(records, assignment) if f == fold], test_path)
        pairs.append((train_path, test_path))
    return pairs


def split_list(cfg: Config, list_file: Path, folds: int, seed: int, group: str | None,
               out_dir: Path) -> list[tuple[Path, Path]]:
    """Cut ``list_file`` into ``folds`` folds (``assign_folds``) and write their lists under ``out_dir``."""
    records = read_list(list_file, cfg.data.format)
    assignment = assign_folds(records, folds, seed, group)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_fold_lists(records, assignment, cfg.data.format, out_dir)


def fold_config(cfg: Config, train_list: Path, test_list: Path) -> Config:
    """``cfg`` with the fold's lists, validated once, after the last epoch."""
    data = dataclasses.replace(cfg.data, train_list=str(train_list.resolve()), val_list=str(test_list.resolve()),
                               test_list=str(test_list.resolve()))
    return dataclasses.replace(cfg, data=data, train=dataclasses.replace(cfg.train, val_every=cfg.train.epochs))


def run_fold(cfg: Config, fold: int, work_dir: Path, probe: bool, device: str, progress: bool) -> FoldResult:
    """Train, test (and probe) one fold whose lists ``cfg`` names; files under ``work_dir``."""
    started = time.time()
    result = train(cfg, work_dir, device=device, progress=progress)
    trained = time.time()
    report = run_test(cfg, work_dir / LATEST, work_dir / "test", device=device, progress=progress)
    tested = time.time()
    probe_top1 = probe_mca = None
    if probe:
        # the training's LP-FT stage (train.head_init: linear_probe) left the train features in the same cache
        probed = run_linear_probe(cfg, work_dir / "probe", device=device, cache_dir=work_dir / "probe_cache",
                                  progress=progress)
        probe_top1, probe_mca = probed.report.top1, probed.report.mean_class_accuracy
    train_videos = len(read_list(Path(cfg.data.train_list), cfg.data.format))
    logger.info("fold %d: test top1 %.4f, mean class accuracy %.4f (%d epochs, %.0fs + %.0fs)", fold,
                report.top1, report.mean_class_accuracy, result.epochs, trained - started, tested - trained)
    return FoldResult(fold, train_videos, report.num_videos, report.top1, report.mean_class_accuracy,
                      round(trained - started, 1), round(tested - trained, 1), probe_top1, probe_mca)


def run_cross_validation(cfg: Config, folds: Sequence[tuple[Path, Path]], work_dir: Path, probe: bool = False,
                         device: str = "auto", progress: bool = True) -> CrossValResult:
    """Every fold in turn (``run_fold``), then ``work_dir/cv.json``."""
    if len(folds) < 2:
        raise ConfigError("folds", f"cross-validation needs at least 2 folds, got {len(folds)}")
    for train_list, test_list in folds:
        for path in (train_list, test_list):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: fold list not found")
    results = []
    for fold, (train_list, test_list) in enumerate(folds, start=1):
        fold_cfg = fold_config(cfg, train_list, test_list)
        results.append(run_fold(fold_cfg, fold, work_dir / f"fold{fold}", probe, device, progress))
    summary = CrossValResult(tuple(results))
    write_summary(summary, work_dir / "cv.json")
    return summary


def write_summary(result: CrossValResult, path: Path) -> None:
    """``cv.json``: the per-fold records and, per metric, mean and sample standard deviation."""
    data: dict[str, object] = {"folds": [dataclasses.asdict(fold) for fold in result.folds]}
    fields = ["top1", "mean_class_accuracy"]
    if all(fold.probe_top1 is not None for fold in result.folds):
        fields += ["probe_top1", "probe_mean_class_accuracy"]
    for field in fields:
        mean, std = result.mean_std(field)
        data[field] = {"mean": mean, "std": std}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def format_table(result: CrossValResult) -> str:
    """The per-fold table with the mean and standard deviation below it."""
    probe = all(fold.probe_top1 is not None for fold in result.folds)
    head = f"{'fold':>4}  {'train':>5}  {'test':>5}  {'top1':>6}  {'mca':>6}  {'train s':>8}  {'test s':>7}"
    lines = [head + ("  probe top1  probe mca" if probe else "")]
    for fold in result.folds:
        line = (f"{fold.fold:>4}  {fold.train_videos:>5}  {fold.test_videos:>5}  {fold.top1:6.4f}  "
                f"{fold.mean_class_accuracy:6.4f}  {fold.train_seconds:8.0f}  {fold.test_seconds:7.0f}")
        if probe:
            line += f"  {fold.probe_top1:10.4f}  {fold.probe_mean_class_accuracy:9.4f}"
        lines.append(line)
    top1, top1_std = result.mean_std("top1")
    mca, mca_std = result.mean_std("mean_class_accuracy")
    summary = f"mean top1 {top1:.4f} +- {top1_std:.4f}, mean class accuracy {mca:.4f} +- {mca_std:.4f}"
    if probe:
        probe_top1, probe_std = result.mean_std("probe_top1")
        summary += f"; probe top1 {probe_top1:.4f} +- {probe_std:.4f}"
    return "\n".join(lines + [summary])
