"""Linear probe: a logistic regression on frozen TSN features, as a baseline and as LP-FT's first stage.

Features: for every video and every test view (``num_clips`` temporal clips x ``crops`` spatial
crops, deterministic), the vector the classifier sees (``TSN.video_descriptor``: the head's
pooled vectors of the K segments averaged, or their maximum with ``consensus: feature_max``):
``(N, V, F)``. A classifier ``W x + b`` fitted on these vectors is what ``head.fc`` computes in
the TSN in eval mode (``init_head``), which is what LP-FT (Kumar et al., ICLR 2022) fine-tunes
from.

Classifier: multinomial logistic regression, every view of a training video one sample,
features centred and divided by their overall standard deviation (folded back into ``W`` and ``b``
afterwards; see ``fit_standardized_path``), objective ``mean cross-entropy + l2 / 2 * ||W||^2`` (bias not penalised),
minimised with full-batch L-BFGS in float64. ``l2`` is the value of ``L2_GRID`` with the lowest
log-loss in a stratified K-fold cross-validation over the training *videos* (all views of a video in
one fold). Test
scores are the softmax probabilities averaged over a video's views, as ``tools/test.py`` does.

Features are cached per list and view set in ``<cache_dir>/<key>.npz``; the key hashes
everything the features depend on (list contents and root, backbone and its weights, head and
consensus, sizes, segments, views, reader).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from tsn.data.dataset import ClipDataset, SkippedVideo
from tsn.evaluation.evaluate import (
    NonFiniteError,
    autocast_context,
    check_on_nonfinite,
    chunked_forward,
    video_path,
)
from tsn.evaluation.testing import Report, score_report, unscored_rows, write_report
from tsn.fileio import atomic_write, atomic_write_text
from tsn.models import TSN
from tsn.training.losses import cross_entropy, inverse_frequency_weights

logger = logging.getLogger("tsn.probe")

# Candidate L2 strengths (on standardised features), weakest to strongest.
L2_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
CV_FOLDS = 5


@dataclass(frozen=True)
class ViewFeatures:
    """Features ``(N, V, F)`` float32 in list order, labels ``(N,)``, skips, and ``read`` ``(N,)``: the videos
    whose features exist (the other rows are NaN: unreadable videos, or, with ``on_nonfinite="skip"``, videos
    whose features were not finite, listed in ``skipped``)."""

    features: np.ndarray
    labels: np.ndarray
    skipped: tuple[SkippedVideo, ...]
    read: np.ndarray

    @property
    def readable(self) -> np.ndarray:
        """Bool ``(N,)``: the videos whose features exist."""
        return self.read


@dataclass(frozen=True)
class LinearClassifier:
    """``scores = x @ weight.T + bias`` on raw (unstandardised) features: weight ``(C, F)``, bias ``(C,)``."""

    weight: np.ndarray
    bias: np.ndarray

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``(..., F)`` -> ``(..., C)`` float64."""
        return features.astype(np.float64) @ self.weight.T + self.bias

    def video_scores(self, features: np.ndarray) -> np.ndarray:
        """Per-view features ``(N, V, F)`` -> softmax probabilities averaged over the views ``(N, C)``."""
        logits = self.logits(features)  # (N, V, C)
        logits -= logits.max(axis=-1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=-1, keepdims=True)
        return probs.mean(axis=1)


@dataclass(frozen=True)
class ProbeFit:
    """A fitted probe: the classifier, the chosen ``l2``, and per grid value the cross-validated video top-1
    and mean negative log-likelihood (empty when ``l2`` was given)."""

    classifier: LinearClassifier
    l2: float
    cv_top1: dict[float, float]
    cv_nll: dict[float, float]


@torch.no_grad()
def extract_view_features(model: TSN, loader: DataLoader, device: torch.device, num_videos: int,
                          amp: str = "none", progress: bool = False, channels_last: bool = False,
                          clips_per_forward: int | None = None, on_nonfinite: str = "raise",
                          check: bool = True) -> ViewFeatures:
    """Run ``model`` in eval mode over a test-mode ``loader`` (clips ``(B, V, T, C, H, W)``) of a list of
    ``num_videos`` videos -> ``ViewFeatures``; rows of videos never read stay NaN. A video read whose features
    are NaN or infinite raises ``NonFiniteError`` (``on_nonfinite="raise"``) or is left out and listed in
    ``skipped`` (``"skip"``); ``check=False`` leaves that to the caller (``refuse_nonfinite``, on every rank
    after the features are gathered). ``channels_last`` and ``clips_per_forward``: see
    ``tsn.evaluation.evaluate.chunked_forward``."""
    from tqdm import tqdm

    check_on_nonfinite(on_nonfinite)
    was_training = model.training
    model.eval()
    features: np.ndarray | None = None
    labels = np.full(num_videos, -1, dtype=np.int64)
    read = np.zeros(num_videos, dtype=bool)
    skipped: list[SkippedVideo] = []
    for batch in tqdm(loader, desc="probe features", leave=False, disable=not progress, dynamic_ncols=True):
        clips = batch.clips.to(device, non_blocking=True)  # uint8: normalised chunk by chunk
        if clips.dim() == 5:
            clips = clips.unsqueeze(1)  # (B, T, C, H, W) -> (B, 1, T, C, H, W)
        b, v = clips.shape[:2]
        with autocast_context(device, amp):
            # (B*V, T, C, H, W) -> (B*V, F)
            descriptors = chunked_forward(model.video_descriptor, clips.flatten(0, 1), clips_per_forward,
                                          channels_last, tuple(model.spec.mean), tuple(model.spec.std))
        out = descriptors.float().reshape(b, v, -1).cpu().numpy()  # (B, V, F)
        if features is None:
            features = np.full((num_videos, v, out.shape[-1]), np.nan, dtype=np.float32)
        own = ~batch.replaced.numpy()  # a stand-in for an unreadable video fills its own row when it is asked for
        rows = batch.indices.numpy()[own]
        features[rows] = out[own]
        labels[rows] = batch.labels.numpy()[own]
        read[rows] = True
        skipped.extend(batch.skipped)
    model.train(was_training)
    if features is None:
        raise ValueError("no videos to compute probe features from")
    extracted = ViewFeatures(features, labels, tuple(sorted(set(skipped))), read)
    return refuse_nonfinite(extracted, lambda index: video_path(loader, index), on_nonfinite) if check else extracted


def refuse_nonfinite(features: ViewFeatures, path_of: Callable[[int], str], on_nonfinite: str) -> ViewFeatures:
    """``features`` whose read videos all have finite features; a video read with NaN or infinite ones raises
    ``NonFiniteError`` (``"raise"``) or is left out and listed in ``skipped`` (``"skip"``)."""
    bad = np.flatnonzero(features.read & ~np.isfinite(features.features).all(axis=(1, 2)))
    if not bad.size:
        return features
    paths = [path_of(int(i)) for i in bad]
    if on_nonfinite == "raise":
        raise NonFiniteError("features", paths)
    values, read = features.features.copy(), features.read.copy()
    values[bad], read[bad] = np.nan, False
    skipped = set(features.skipped) | {SkippedVideo(path, "non-finite features (NaN or infinity)") for path in paths}
    return ViewFeatures(values, features.labels, tuple(sorted(skipped)), read)


def fit_logistic_regression(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float,
                            max_iter: int = 300, tolerance: float = 1e-7,
                            start: LinearClassifier | None = None,
                            class_weights: np.ndarray | None = None) -> LinearClassifier:
    """Multinomial logistic regression: ``features (N, F)``, int ``labels (N,)`` -> the minimiser of
    ``mean_i w_{y_i} CE(W x_i + b, y_i) + l2 / 2 * ||W||^2`` (no penalty on ``b``), by L-BFGS in float64;
    ``w``: ``class_weights (num_classes,)``, or 1 for every class.

    The objective is strictly convex in ``W`` for ``l2 > 0``, so the result does not depend on the
    start (zeros, or ``start``: a nearby solution, e.g. for the next ``l2`` of a path, converges
    faster); only the bias of a class absent from ``labels`` has no minimum and keeps falling.
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"expected features (N, F) and labels (N,), got {features.shape} and {labels.shape}")
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64))
    y = torch.from_numpy(labels.astype(np.int64))
    weights = None if class_weights is None else torch.from_numpy(np.asarray(class_weights, np.float64))
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    bias = torch.zeros(num_classes, dtype=torch.float64)
    if start is not None:
        weight.copy_(torch.from_numpy(start.weight))
        bias.copy_(torch.from_numpy(start.bias))
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance,
                                  tolerance_change=tolerance * 1e-3, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = cross_entropy(x @ weight.T + bias, y, class_weights=weights) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearClassifier(weight.detach().numpy().copy(), bias.detach().numpy().copy())


def fit_standardized_path(features: np.ndarray, labels: np.ndarray, num_classes: int,
                          l2s: Sequence[float], class_weights: np.ndarray | None = None) -> list[LinearClassifier]:
    """``fit_logistic_regression`` for each of ``l2s`` on centred features divided by their overall standard
    deviation, the scaling folded back so that the classifiers take raw features. Fitted strongest penalty
    first, each fit starting from the previous solution. ``class_weights``: see ``fit_logistic_regression``.

    One scale for all dimensions, not one per dimension: per-dimension scaling lets dimensions that
    hardly vary (std 0.0005 against a median of 0.1 for EfficientNet-Lite0 here) take weights
    thousands of times larger, and fine-tuning under such a head (LP-FT) moves exactly those
    dimensions and diverges even at a learning rate of 0.001.
    """
    mean = features.mean(axis=0, dtype=np.float64)
    std = float(features.std(dtype=np.float64))
    std = std if std > 1e-12 else 1.0  # constant features carry nothing; keep it finite
    z = (features - mean) / std
    fitted: dict[float, LinearClassifier] = {}
    start = None
    for l2 in sorted(set(l2s), reverse=True):
        start = fitted[l2] = fit_logistic_regression(z, labels, num_classes, l2, start=start,
                                                     class_weights=class_weights)
    out = []
    for l2 in l2s:
        weight = fitted[l2].weight / std  # W z = W (x - mean) / std
        out.append(LinearClassifier(weight, fitted[l2].bias - weight @ mean))
    return out


def fit_standardized(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float,
                     class_weights: np.ndarray | None = None) -> LinearClassifier:
    """``fit_standardized_path`` for one ``l2``."""
    return fit_standardized_path(features, labels, num_classes, [l2], class_weights)[0]


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number ``(N,)`` in ``[0, folds)`` per sample: each class dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(labels.shape[0], dtype=np.int64)
    offset = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(members.size)]
        # continue the deal where the last class stopped, so that fold sizes stay balanced
        assignment[members] = (offset + np.arange(members.size)) % folds
        offset += members.size
    return assignment


def _top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == labels).mean()) if labels.size else 0.0


def _flatten_views(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, V, F)``, ``(N,)`` -> one sample per view: ``(N * V, F)``, ``(N * V,)``."""
    n, v, f = features.shape
    return features.reshape(n * v, f), np.repeat(labels, v)


def fit_probe(train: ViewFeatures, num_classes: int, l2: float | None = None, seed: int = 0,
              folds: int = CV_FOLDS, grid: Sequence[float] = L2_GRID, balanced: bool = False) -> ProbeFit:
    """Fit the probe on the readable videos of ``train``; ``l2=None`` picks the value of ``grid`` with the
    lowest log-loss in a stratified ``folds``-fold cross-validation over videos (the stronger on a tie).
    ``balanced``: every video weighted by its class's inverse frequency (``inverse_frequency_weights``), in
    the fits and in the log-loss that picks ``l2``."""
    keep = train.readable
    features, labels = train.features[keep], train.labels[keep]
    if labels.size == 0:
        raise ValueError("no readable training videos for the linear probe")
    weights = inverse_frequency_weights(labels.tolist(), num_classes) if balanced else None
    class_weights = None if weights is None else np.asarray(weights)
    cv_top1: dict[float, float] = {}
    cv_nll: dict[float, float] = {}
    if l2 is None:
        folds = max(2, min(folds, int(np.bincount(labels).max())))
        assignment = stratified_folds(labels, folds, seed)
        scores = np.zeros((len(grid), labels.size, num_classes))  # (grid, N, C) held-out video scores
        for fold in range(folds):
            held = assignment == fold
            path = fit_standardized_path(*_flatten_views(features[~held], labels[~held]), num_classes, grid,
                                         class_weights)
            for g, fitted in enumerate(path):
                scores[g, held] = fitted.video_scores(features[held])
        for g, value in enumerate(grid):
            cv_top1[value] = _top1(scores[g], labels)
            nll = -np.log(np.maximum(scores[g, np.arange(labels.size), labels], 1e-12))
            cv_nll[value] = float(np.average(nll, weights=None if class_weights is None else class_weights[labels]))
        # log-loss, not accuracy: smooth on a few dozen videos, and it penalises the overconfident
        # head of a too weak penalty, which would also be a bad start for LP-FT
        l2 = min(cv_nll, key=lambda value: (cv_nll[value], -value))
    classifier = fit_standardized(*_flatten_views(features, labels), num_classes, l2, class_weights)
    return ProbeFit(classifier, float(l2), cv_top1, cv_nll)


def init_head(model: TSN, classifier: LinearClassifier) -> None:
    """Copy a probe's ``weight (C, F)`` and ``bias (C,)`` into the TSN head's final linear layer ``head.fc``."""
    fc = model.head.fc
    if tuple(fc.weight.shape) != classifier.weight.shape:
        raise ValueError(f"probe classifier {classifier.weight.shape} does not fit head.fc {tuple(fc.weight.shape)}")
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(classifier.weight).to(fc.weight))
        fc.bias.copy_(torch.from_numpy(classifier.bias).to(fc.bias))


def load_cached(path: Path) -> ViewFeatures | None:
    """Features saved by ``save_cached``, or None when the file is absent or unreadable (then recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            skipped = tuple(SkippedVideo(p, r) for p, r in zip(data["skipped_paths"].tolist(),
                                                               data["skipped_reasons"].tolist()))
            return ViewFeatures(data["features"], data["labels"], skipped, data["read"])
    except (OSError, ValueError, KeyError) as err:
        logger.warning("probe cache %s unreadable (%s): recomputing", path, err)
        return None


def save_cached(path: Path, features: ViewFeatures) -> None:
    """Write ``features`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = np.array([item.path for item in features.skipped], dtype=str)
    reasons = np.array([item.reason for item in features.skipped], dtype=str)
    atomic_write(path, lambda handle: np.savez(handle, features=features.features, labels=features.labels,
                                              skipped_paths=paths, skipped_reasons=reasons, read=features.read))


def write_probe_summary(out_dir: Path, fit: ProbeFit, seconds: float) -> None:
    """``probe.json``: the chosen l2, the cross-validated top-1 and log-loss per grid value, the fit time."""
    summary = {"l2": fit.l2, "cv_top1": {repr(k): v for k, v in fit.cv_top1.items()},
               "cv_nll": {repr(k): v for k, v in fit.cv_nll.items()}, "seconds": round(seconds, 2)}
    atomic_write_text(out_dir / "probe.json", json.dumps(summary, indent=2) + "\n")


def timed_fit(train: ViewFeatures, num_classes: int, l2: float | None, seed: int,
              balanced: bool = False) -> tuple[ProbeFit, float]:
    """``fit_probe`` and the seconds it took (logged with the choice)."""
    started = time.time()
    fit = fit_probe(train, num_classes, l2, seed, balanced=balanced)
    seconds = time.time() - started
    cv = ", ".join(f"{k:g}: {fit.cv_top1[k]:.3f}/{fit.cv_nll[k]:.3f}" for k in fit.cv_top1)
    logger.info("linear probe: l2 %g%s, fitted in %.1fs", fit.l2, f" (cv top1/log-loss {cv})" if cv else "", seconds)
    return fit, seconds


@dataclass(frozen=True)
class ProbeResult:
    """What ``run_linear_probe`` produced: the fit and the test report."""

    fit: ProbeFit
    report: Report


@dataclass(frozen=True)
class FeatureSettings:
    """How probe features are computed (autocast ``amp``, channels-last clips, at most ``clips_per_forward``
    clips a forward, what a non-finite feature does: see ``extract_view_features``) and what else their cache
    key names: ``model_keys``, the settings of the network (backbone, head, consensus, ...), and ``weights``,
    the initial weights."""

    amp: str
    channels_last: bool
    clips_per_forward: int
    on_nonfinite: str
    model_keys: dict[str, object]
    weights: str


def probe_features(model: TSN, dataset: ClipDataset, loader: DataLoader, settings: FeatureSettings,
                   device: torch.device, cache_dir: Path | None, progress: bool = True,
                   distributed: bool = False) -> ViewFeatures:
    """Features of every video and view of ``dataset`` (read by ``loader``) from ``model``, read from / written
    to ``cache_dir`` when given. Under DDP each rank computes its share and every rank gets all of them."""
    parts = {"root": str(dataset.root.resolve()), "format": dataset.format, "backend": dataset.backend,
             **settings.model_keys, "modality": model.modality, "amp": settings.amp, "weights": settings.weights,
             "segments": dataset.num_segments, "new_length": dataset.new_length, "clips": dataset.num_clips,
             "transform": repr(vars(dataset.transform)), "seed": dataset.seed}
    records = "\n".join(f"{r.path} {r.num_frames} {r.label}" for r in dataset.records).encode()
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode() + records).hexdigest()[:20]
    path = cache_dir / f"{key}.npz" if cache_dir is not None else None
    cached = load_cached(path) if path is not None else None
    width = model.head.descriptor_dim
    if cached is not None and cached.features.shape[0] == len(dataset) and cached.features.shape[-1] == width:
        logger.info("probe features of %d videos from %s", len(dataset), path)
        return cached
    features = extract_view_features(model, loader, device, len(dataset), settings.amp, progress,
                                     settings.channels_last, settings.clips_per_forward, settings.on_nonfinite,
                                     check=not distributed)
    if distributed:  # every rank sees every row, so that all of them refuse a non-finite one together
        features = refuse_nonfinite(_gather_features(features), dataset.path, settings.on_nonfinite)
    if path is not None and (not distributed or torch.distributed.get_rank() == 0):
        save_cached(path, features)
    return features


def _gather_features(local: ViewFeatures) -> ViewFeatures:
    """Every rank's rows (the others are NaN) merged on every rank."""
    gathered: list[ViewFeatures | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local)
    features = local.features.copy()
    labels = local.labels.copy()
    read = local.read.copy()
    skipped = set(local.skipped)
    for part in gathered:
        assert part is not None  # all_gather_object filled every slot
        rows = part.read
        features[rows] = part.features[rows]
        labels[rows] = part.labels[rows]
        read |= rows
        skipped.update(part.skipped)
    return ViewFeatures(features, labels, tuple(sorted(skipped)), read)


def probe_report(train: ViewFeatures, test: ViewFeatures, test_set: ClipDataset, class_names: list[str],
                 out_dir: Path, l2: float | None, seed: int, balanced: bool = False) -> ProbeResult:
    """Fit the probe on ``train`` (``l2`` None: chosen by cross-validation seeded with ``seed``; classes weighed
    when ``balanced``), score ``test``
    (the features of ``test_set``), and write ``tools/test.py``'s report files under ``out_dir`` plus
    ``probe.json`` and ``classifier.npz``."""
    num_classes = len(class_names)
    fit, seconds = timed_fit(train, num_classes, l2, seed, balanced)
    scores = np.full((len(test_set), num_classes), np.nan)
    readable = test.readable
    scores[readable] = fit.classifier.video_scores(test.features[readable])
    labels = np.array([record.label for record in test_set.records], dtype=np.int64)
    report = score_report(scores[readable], labels[readable], num_classes)
    write_report(report, class_names, out_dir, scores, unscored_rows(test_set, readable, test.skipped),
                 train_skipped=train.skipped)
    write_probe_summary(out_dir, fit, seconds)
    atomic_write(out_dir / "classifier.npz",
                 lambda handle: np.savez(handle, weight=fit.classifier.weight, bias=fit.classifier.bias))
    return ProbeResult(fit, report)


def fit_head(model: TSN, features: ViewFeatures, num_classes: int, seed: int, balanced: bool = False) -> ProbeFit:
    """Fit the probe on ``features`` (of the training list, from ``model`` as it is now; classes weighed when
    ``balanced``) and copy it into ``model.head.fc``: LP-FT's first stage."""
    fit, _ = timed_fit(features, num_classes, None, seed, balanced)
    init_head(model, fit.classifier)
    return fit
