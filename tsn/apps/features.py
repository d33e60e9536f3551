"""Video-level features of a TSN backbone, and their nearest neighbours (``tools/extract_features.py``).

One vector per video: the val-mode clip (segment middles, centre crop) goes through the
backbone frame by frame; each frame's feature map ``(D, h, w)`` is averaged over space, and
the ``T = K`` frame vectors over the segments. By default the map is the backbone's output
(``D = spec.feature_dim``); ``layer`` picks any named module of the backbone instead (the
spec's ``feature_layers`` are the usual choices).

Files under the output folder:

- ``features.npy``: float32 ``(N, D)``, row i = line i of the list. The rows of videos that
  could not be read (``data.on_error: skip``) are NaN and listed in ``skipped.csv``.
- ``index.csv``: ``row,path,label`` (the list's path and label of each row).
- with ``knn=K``: ``neighbours.csv`` (``row,path,label,rank,neighbour_row,neighbour_path,
  neighbour_label,distance``, rank 1 = nearest) and ``knn.json`` (``k``, ``precision_at_k``:
  the fraction of a video's K neighbours that share its label, averaged over videos,
  ``num_queries``, ``metric``). Unread videos are neither queries nor neighbours.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from tsn.data.dataset import SkippedVideo
from tsn.data.lists import VideoRecord
from tsn.evaluation.evaluate import (
    NonFiniteError,
    autocast_context,
    batch_to_device,
    check_on_nonfinite,
    video_path,
)
from tsn.fileio import atomic_write, atomic_write_text
from tsn.models import TSN, FeatureExtractor
from tsn.models.modality import stack_segments

logger = logging.getLogger("tsn.features")

QUERY_BATCH = 1024  # query rows per distance block
KEY_BATCH = 8192  # database rows per distance block: a block is QUERY_BATCH x KEY_BATCH float64 = 64 MiB


@dataclass(frozen=True)
class FeatureSet:
    """Features ``(N, D)`` float32 in list order (NaN rows: unread videos) and the videos skipped."""

    features: np.ndarray
    skipped: tuple[SkippedVideo, ...]


@dataclass(frozen=True)
class KnnResult:
    """Neighbour rows ``(Q, K)`` int64 and distances ``(Q, K)`` float64 of the query rows ``(Q,)``,
    nearest first, and precision@K against the labels."""

    rows: np.ndarray
    neighbours: np.ndarray
    distances: np.ndarray
    precision_at_k: float


@dataclass(frozen=True)
class ExtractResult:
    """What ``run_extract`` produced: the features and, when asked for, the neighbours."""

    features: FeatureSet
    knn: KnnResult | None


@dataclass(frozen=True)
class ExtractSettings:
    """What ``extract_to`` computes: the backbone ``layer`` (None: its output), ``knn`` neighbours per video
    (None: none) searched ``query_batch`` queries at a time, autocast ``amp``, and what a non-finite feature
    does (``extract_features``)."""

    layer: str | None
    knn: int | None
    query_batch: int
    amp: str
    on_nonfinite: str


def check_layer(model: TSN, layer: str) -> None:
    """ValueError naming ``layer`` and the spec's feature layers when the backbone has no such module."""
    names = {name for name, _ in model.backbone.named_modules() if name}
    if layer not in names:
        raise ValueError(f"layer {layer!r}: no such module in backbone {model.spec.name!r} "
                         f"(feature layers: {', '.join(model.spec.feature_layers)})")


def video_features(model: TSN, clips: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """Normalised clips ``(B, T, C, H, W)`` -> float32 ``(B, D)``: the backbone's map (or ``layer``'s)
    averaged over space, then over the backbone's inputs (the T frames; for flow and RGB difference
    the K segment stacks, ``tsn.models.modality.stack_segments``)."""
    inputs = stack_segments(clips, model.modality, model.num_segments)  # (B, T', C', H, W)
    b, t = inputs.shape[:2]
    frames = inputs.reshape(b * t, *inputs.shape[2:])  # (B*T', C', H, W)
    if layer is None:
        maps = model.backbone(frames)  # (B*T, D, h, w)
    else:
        maps = FeatureExtractor(model.backbone, [layer])(frames)[layer]
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (2, 4):
        kind = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"layer {layer or 'backbone output'!r} gives {kind}, not a map (N, D, h, w) or vector (N, D)")
    pooled = maps.float().mean(dim=(2, 3)) if maps.dim() == 4 else maps.float()  # (B*T, D)
    return pooled.reshape(b, t, -1).mean(dim=1)  # (B, T', D) -> (B, D)


@torch.inference_mode()
def extract_features(model: TSN, loader: DataLoader, device: torch.device, num_videos: int,
                     layer: str | None = None, amp: str = "none", progress: bool = False,
                     on_nonfinite: str = "raise") -> FeatureSet:
    """Run ``model``'s backbone in eval mode over ``loader`` (val-mode ``ClipBatch``es of a list of
    ``num_videos`` videos) -> ``FeatureSet`` with one row per list index; rows never produced stay NaN. A video
    read whose features are NaN or infinite raises ``NonFiniteError`` (``on_nonfinite="raise"``), or its row
    is left NaN and it is listed in ``skipped`` (``"skip"``)."""
    from tqdm import tqdm

    check_on_nonfinite(on_nonfinite)
    read = np.zeros(num_videos, dtype=bool)
    model.eval()
    if layer is not None:
        check_layer(model, layer)
    features: np.ndarray | None = None
    skipped: list[SkippedVideo] = []
    for batch in tqdm(loader, desc="features", leave=False, disable=not progress, dynamic_ncols=True):
        if batch.clips.dim() != 5:
            raise ValueError(f"expected clips (B, T, C, H, W), got {tuple(batch.clips.shape)}")
        clips, _ = batch_to_device(batch, device, model.spec.mean, model.spec.std)
        with autocast_context(device, amp):
            out = video_features(model, clips, layer).float().cpu().numpy()
        if features is None:
            features = np.full((num_videos, out.shape[1]), np.nan, dtype=np.float32)
        # indices are the videos really read: a skipped video's row stays NaN
        features[batch.indices.numpy()] = out
        read[batch.indices.numpy()] = True
        skipped.extend(batch.skipped)
    if features is None:
        raise ValueError("no videos to extract features from")
    bad = np.flatnonzero(read & ~np.isfinite(features).all(axis=1))
    paths = [video_path(loader, int(i)) for i in bad]
    if bad.size and on_nonfinite == "raise":
        raise NonFiniteError("features", paths)
    features[bad] = np.nan
    skipped += [SkippedVideo(path, "non-finite features (NaN or infinity)") for path in paths]
    return FeatureSet(features, tuple(sorted(set(skipped))))


def nearest_neighbours(features: torch.Tensor, k: int, query_batch: int = QUERY_BATCH,
                       key_batch: int = KEY_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``k`` nearest other rows by Euclidean distance: ``(N, D)`` -> indices int64 ``(N, k)``
    and distances float64 ``(N, k)``, nearest first, ties to the lower row index.

    A row never counts as its own neighbour (an identical other row does, at distance 0).
    Memory stays bounded by blocks of ``query_batch x key_batch`` distances: queries go block
    by block, and for each, keys too, keeping a running top-k. The search uses ``torch.cdist``'s
    matrix-product form in float64 (fast; its rounding is far below any real gap between
    features); the k distances returned are then recomputed directly as ``||q - x||``, so that
    identical features give exactly 0, and the k re-sorted on them.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got {tuple(features.shape)}")
    n = features.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k={k} nearest neighbours need 1 <= k <= N-1 = {n - 1} (N = {n} videos)")
    if query_batch < 1 or key_batch < 1:
        raise ValueError(f"query_batch and key_batch must be >= 1, got {query_batch}, {key_batch}")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or infinity; leave those rows out")
    data = features.to(torch.float64)
    all_indices, all_distances = [], []
    for q0 in range(0, n, query_batch):
        queries = data[q0:q0 + query_batch]  # (Q, D)
        rows = torch.arange(q0, q0 + queries.shape[0], device=data.device)  # (Q,)
        best_d = torch.empty(queries.shape[0], 0, dtype=torch.float64, device=data.device)  # (Q, <=k)
        best_i = torch.empty(queries.shape[0], 0, dtype=torch.int64, device=data.device)
        for k0 in range(0, n, key_batch):
            keys = data[k0:k0 + key_batch]  # (C, D)
            dist = torch.cdist(queries, keys, compute_mode="use_mm_for_euclid_dist")  # (Q, C)
            cols = torch.arange(k0, k0 + keys.shape[0], device=data.device)  # (C,)
            dist = dist.masked_fill(rows[:, None] == cols[None, :], float("inf"))  # not its own neighbour
            # running best first: they have lower row indices, so the stable sort keeps ties index-ordered
            cand_d = torch.cat([best_d, dist], dim=1)  # (Q, <=k + C)
            cand_i = torch.cat([best_i, cols.expand(queries.shape[0], -1)], dim=1)
            order = torch.sort(cand_d, dim=1, stable=True).indices[:, :k]
            best_d, best_i = cand_d.gather(1, order), cand_i.gather(1, order)
        exact = torch.stack([(queries - data[best_i[:, j]]).norm(dim=1) for j in range(k)], dim=1)  # (Q, k)
        # re-sort the k on the exact distances, ties by row index: sort by index, then stably by distance
        by_index = torch.sort(best_i, dim=1).indices
        best_i, exact = best_i.gather(1, by_index), exact.gather(1, by_index)
        order = torch.sort(exact, dim=1, stable=True).indices
        all_indices.append(best_i.gather(1, order).cpu())
        all_distances.append(exact.gather(1, order).cpu())
    return torch.cat(all_indices), torch.cat(all_distances)


def precision_at_k(labels: np.ndarray, neighbours: np.ndarray) -> float:
    """Fraction of each query's neighbours that share its label, averaged over queries.

    ``labels (Q,)`` of the queries, ``neighbours (Q, K)`` the neighbours' labels.
    """
    if neighbours.ndim != 2 or neighbours.shape[0] != labels.shape[0] or neighbours.shape[0] == 0:
        raise ValueError(f"expected labels (Q,) and neighbour labels (Q, K) with Q > 0, "
                         f"got {labels.shape} and {neighbours.shape}")
    return float((neighbours == labels[:, None]).mean())


def knn_search(features: np.ndarray, labels: np.ndarray, k: int, device: torch.device,
               query_batch: int = QUERY_BATCH) -> KnnResult:
    """kNN among the finite rows of ``features (N, D)`` (NaN rows, unread videos, take no part);
    row numbers in the result are those of ``features``."""
    rows = np.flatnonzero(np.isfinite(features).all(axis=1))
    if rows.size < k + 1:
        raise ValueError(f"--knn {k} needs at least {k + 1} readable videos, got {rows.size}")
    found, distances = nearest_neighbours(torch.from_numpy(features[rows]).to(device), k, query_batch)
    neighbours = rows[found.numpy()]  # positions among the finite rows -> list rows
    return KnnResult(rows=rows, neighbours=neighbours, distances=distances.numpy(),
                     precision_at_k=precision_at_k(labels[rows], labels[neighbours]))


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_features(out_dir: Path, features: FeatureSet, records: Sequence[VideoRecord]) -> None:
    """``features.npy``, ``index.csv`` and (when videos were skipped) ``skipped.csv``, each written atomically."""
    def save(handle: BinaryIO) -> None:
        np.save(handle, features.features)

    atomic_write(out_dir / "features.npy", save)
    atomic_write_text(out_dir / "index.csv", _csv_text(
        ("row", "path", "label"), [(i, record.path, record.label) for i, record in enumerate(records)]))
    if features.skipped:
        atomic_write_text(out_dir / "skipped.csv", _csv_text(("path", "reason"), features.skipped))


def write_knn(out_dir: Path, knn: KnnResult, records: Sequence[VideoRecord]) -> None:
    """``neighbours.csv`` (one line per query and rank) and ``knn.json``, each written atomically."""
    lines = []
    for q, row in enumerate(knn.rows):
        query = records[row]
        for rank, (other, distance) in enumerate(zip(knn.neighbours[q], knn.distances[q]), start=1):
            neighbour = records[other]
            lines.append((row, query.path, query.label, rank, other, neighbour.path, neighbour.label,
                          repr(float(distance))))
    header = ("row", "path", "label", "rank", "neighbour_row", "neighbour_path", "neighbour_label", "distance")
    atomic_write_text(out_dir / "neighbours.csv", _csv_text(header, lines))
    summary = {"k": int(knn.neighbours.shape[1]), "precision_at_k": knn.precision_at_k,
               "num_queries": int(knn.rows.size), "metric": "euclidean"}
    atomic_write_text(out_dir / "knn.json", json.dumps(summary, indent=2) + "\n")


def extract_to(model: TSN, loader: DataLoader, out_dir: Path, device: torch.device, settings: ExtractSettings,
               progress: bool = True) -> ExtractResult:
    """Features of every video of ``loader``'s dataset (val clips of a ``ClipDataset``'s list) written under
    ``out_dir``; with ``settings.knn`` also the neighbours and precision@K (module docstring)."""
    dataset = loader.dataset
    features = extract_features(model, loader, device, len(dataset), settings.layer, settings.amp, progress,
                                settings.on_nonfinite)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_features(out_dir, features, dataset.records)
    for item in features.skipped:
        logger.warning("no features: %s: %s", item.path, item.reason)
    result = None
    if settings.knn is not None:
        labels = np.array([record.label for record in dataset.records], dtype=np.int64)
        result = knn_search(features.features, labels, settings.knn, device, settings.query_batch)
        write_knn(out_dir, result, dataset.records)
    return ExtractResult(features, result)
