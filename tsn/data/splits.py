"""Splits of a list: stratified, seeded folds that keep groups of videos together, and a validation split
carved from a training list.

A group is what the first capture group of a regular expression finds in a path (or its whole match):
the actor pair of UT-Interaction, UCF101's ``gXX``, the source film of HMDB51's clips. Videos of one group
never land on both sides of a split: clips of the same people or the same film in training and
validation would make validation measure recall of the people, not of the actions.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from tsn.data.lists import VideoRecord


def group_of(path: str, pattern: re.Pattern[str] | None) -> str:
    """The group a path belongs to: the first capture group of ``pattern`` (or its whole match); the path
    itself without a pattern. ValueError naming the path when the pattern does not match it."""
    if pattern is None:
        return path
    match = pattern.search(path)
    if match is None:
        raise ValueError(f"{path}: --group pattern {pattern.pattern!r} does not match it")
    return match.group(1) if pattern.groups else match.group(0)


def assign_folds(records: Sequence[VideoRecord], folds: int, seed: int = 0,
                 group: str | None = None) -> np.ndarray:
    """Fold index ``(N,)`` in ``[0, folds)`` for every record: stratified by label, grouped by ``group``.

    Groups (see ``group_of``) are visited in a seeded random order, largest first (a stable sort on
    size), and each goes to the fold that, after taking it, has the smallest largest per-class
    excess over the ideal share (ties: fewer videos, then the lower fold). Without groups every video
    is its own group, and each class is dealt evenly: per-class fold counts differ by at most one.
    """
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    pattern = re.compile(group) if group is not None else None
    labels = np.array([record.label for record in records], dtype=np.int64)
    names = [group_of(record.path, pattern) for record in records]
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name, []).append(index)
    if len(groups) < folds:
        raise ValueError(f"{len(groups)} group(s) cannot fill {folds} folds")
    num_classes = int(labels.max()) + 1 if labels.size else 0
    ideal = np.bincount(labels, minlength=num_classes) / folds  # (classes,) per fold
    rng = np.random.default_rng(seed)
    order = [list(groups)[i] for i in rng.permutation(len(groups))]
    order.sort(key=lambda name: -len(groups[name]))  # stable: equal sizes keep the seeded order
    counts = np.zeros((folds, num_classes), dtype=np.int64)
    assignment = np.empty(labels.size, dtype=np.int64)
    for name in order:
        members = groups[name]
        adds = np.bincount(labels[members], minlength=num_classes)
        # (folds,) largest excess over the ideal share among the classes the group adds, if it went to
        # that fold (classes it does not add must not hide the ones it does)
        excess = np.where(adds > 0, (counts + adds) - ideal, -np.inf).max(axis=1)
        best = min(range(folds), key=lambda f: (excess[f], counts[f].sum(), f))
        counts[best] += adds
        assignment[members] = best
    empty = [f for f in range(folds) if counts[f].sum() == 0]
    if empty:
        raise ValueError(f"fold {empty[0]} got no videos: fewer groups than folds can fill")
    return assignment


def carve_validation(records: Sequence[VideoRecord], fraction: float, seed: int = 0,
                     group: str | None = None) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """Split a training list into (the rest, a validation part of about ``fraction`` of it), stratified by label
    and grouped by ``group`` (``assign_folds`` with ``round(1 / fraction)`` folds; the validation part is the
    first). Records keep their list order in both parts."""
    if not 0 < fraction <= 0.5:
        raise ValueError(f"the validation fraction must be in (0, 0.5], got {fraction}")
    assignment = assign_folds(records, max(2, round(1 / fraction)), seed, group)
    rest = [record for record, fold in zip(records, assignment) if fold != 0]
    held = [record for record, fold in zip(records, assignment) if fold == 0]
    return rest, held
