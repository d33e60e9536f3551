"""TSN frame sampling: which 0-based frame indices a clip is made of.

A video of ``num_frames`` frames is cut into ``K = num_segments`` segments. Each segment
contributes ``L = new_length`` consecutive frames starting at one start position, so a clip
has ``T = K * L`` indices, segment-major (frame t belongs to segment t // L), as in
``tsn.layout``.

Only ``n = max(num_frames - L + 1, 1)`` start positions are usable, so that a start
plus ``L - 1`` stays inside the video. Every index is finally clipped to
``[0, num_frames - 1]``, which only matters when the video is shorter than ``L``.

- train (``bounds="fractional"``, the default): one random start in each of ``K`` segments
  with the fractional boundaries that validation uses, ``b_k = (k * n) // K``:
  ``start_k = b_k + r_k`` with ``r_k`` uniform in ``[0, b_{k+1} - b_k)``, so every start is
  reachable (the last segment ends at ``n``). A segment of length 0 (only when ``n < K``)
  takes ``b_k``, so some starts repeat.
- train (``bounds="mmaction2"``, mmaction2's and the original TSN's): ``K`` equal segments of
  length ``avg = n // K``, ``start_k = k * avg + r_k`` with ``r_k`` uniform in ``[0, avg)``;
  the last ``n - K * avg`` starts are never drawn (with n = 7, K = 3 frame 6; with n = 15,
  K = 8 frames 8 to 14). When ``n < K`` the starts are ``(k * n) // K``, as above.
- val: the middle of each segment, ``start_k = ((2k + 1) * n) // (2K)``.
- test: ``C = num_clips`` temporal views interleaved in ``K * C`` equal parts,
  ``start_{c,k} = ((2(kC + c) + 1) * n) // (2KC)``; ``C = 1`` gives exactly the val indices.

All arithmetic is integer arithmetic: no float division, so no rounding surprises.
"""

from __future__ import annotations

import operator

import numpy as np


def _positive_int(value: int, name: str) -> int:
    """``value`` as a Python int; ValueError naming ``name`` unless it is an integer >= 1."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {number}")
    return number


def _usable_starts(num_frames: int, new_length: int, parts: int) -> int:
    """``n = max(num_frames - L + 1, 1)``; ValueError where ``2 * parts * n`` would overflow int64."""
    usable = max(num_frames - new_length + 1, 1)
    # (2j + 1) * n < 2 * parts * n must fit in int64 for the integer formulas to be exact
    if 2 * parts * usable >= 2**63:
        raise ValueError(f"num_frames {num_frames} is too large for {parts} segment parts")
    return usable


def _expand(starts: np.ndarray, new_length: int, num_frames: int) -> np.ndarray:
    """Starts ``(..., K)`` -> indices ``(..., K * L)``: each start followed by its L-1 successors."""
    # (..., K, 1) + (L,) -> (..., K, L): segment-major, then flatten the last two axes
    indices = starts[..., None] + np.arange(new_length, dtype=np.int64)
    indices = indices.reshape(*starts.shape[:-1], starts.shape[-1] * new_length)  # (..., K*L)
    return np.minimum(indices, num_frames - 1)


TRAIN_BOUNDS = ("fractional", "mmaction2")


def train_indices(
    num_frames: int,
    num_segments: int,
    new_length: int = 1,
    *,
    rng: np.random.Generator,
    bounds: str = "fractional",
) -> np.ndarray:
    """Random TSN training indices: one random start per segment.

    In: frame count, K, L, a numpy Generator (the only source of randomness; the same
    generator state gives the same indices) and the segment ``bounds`` (module docstring).
    Draws once, ``rng.integers(0, lengths)`` with the K segment lengths (``fractional``) or
    ``rng.integers(0, avg, size=K)`` (``mmaction2``), and only when ``n >= K``; otherwise the
    spread starts ``(k * n) // K`` are used and ``rng`` is not touched.
    Out: int64 ``(K * L,)``, each in ``[0, num_frames - 1]``.
    """
    num_frames = _positive_int(num_frames, "num_frames")
    num_segments = _positive_int(num_segments, "num_segments")
    new_length = _positive_int(new_length, "new_length")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if bounds not in TRAIN_BOUNDS:
        raise ValueError(f"bounds must be one of {TRAIN_BOUNDS}, got {bounds!r}")
    usable = _usable_starts(num_frames, new_length, num_segments)
    k = np.arange(num_segments + 1, dtype=np.int64)
    edges = (k * usable) // num_segments  # (K + 1,) fractional boundaries, edges[K] = n
    if usable < num_segments:
        starts = edges[:-1]
    elif bounds == "fractional":
        lengths = np.diff(edges)  # (K,) each >= 1 since n >= K
        starts = edges[:-1] + rng.integers(0, lengths, dtype=np.int64)
    else:
        avg = usable // num_segments
        starts = k[:-1] * avg + rng.integers(0, avg, size=num_segments, dtype=np.int64)
    return _expand(starts, new_length, num_frames)


def val_indices(num_frames: int, num_segments: int, new_length: int = 1) -> np.ndarray:
    """Deterministic TSN validation indices: the middle start of each segment.

    In: frame count, K, L. Out: int64 ``(K * L,)`` with starts ``((2k + 1) * n) // (2K)``.
    """
    num_frames = _positive_int(num_frames, "num_frames")
    num_segments = _positive_int(num_segments, "num_segments")
    new_length = _positive_int(new_length, "new_length")
    usable = _usable_starts(num_frames, new_length, num_segments)
    k = np.arange(num_segments, dtype=np.int64)
    starts = ((2 * k + 1) * usable) // (2 * num_segments)
    return _expand(starts, new_length, num_frames)


def test_indices(
    num_frames: int,
    num_segments: int,
    new_length: int = 1,
    num_clips: int = 1,
) -> np.ndarray:
    """Deterministic TSN test indices for ``C = num_clips`` temporal views.

    In: frame count, K, L, C. Out: int64 ``(C, K * L)``; row c is view c, with starts
    ``((2 * (k * C + c) + 1) * n) // (2 * K * C)``: the K * C equal parts of the video are
    dealt to the views in turn, so each view still has one start per segment.
    ``num_clips=1`` gives ``val_indices`` as a single row.
    """
    num_frames = _positive_int(num_frames, "num_frames")
    num_segments = _positive_int(num_segments, "num_segments")
    new_length = _positive_int(new_length, "new_length")
    num_clips = _positive_int(num_clips, "num_clips")
    usable = _usable_starts(num_frames, new_length, num_segments * num_clips)
    # part index j = k * C + c, laid out as (C, K) so that row c holds view c
    c = np.arange(num_clips, dtype=np.int64)[:, None]  # (C, 1)
    k = np.arange(num_segments, dtype=np.int64)[None, :]  # (1, K)
    parts = k * num_clips + c  # (C, K)
    starts = ((2 * parts + 1) * usable) // (2 * num_segments * num_clips)  # (C, K)
    return _expand(starts, new_length, num_frames)


# The name starts with "test", so pytest would collect it as a test wherever it is imported.
test_indices.__test__ = False  # type: ignore[attr-defined]
