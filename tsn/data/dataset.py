"""The clip Dataset: list records -> sampled, transformed clips in the layout of ``tsn.layout``.

One sample is ``ClipSample(clip, label, index, skipped, requested)``:

- ``clip``: torch uint8 ``(T, C, H, W)`` in train/val mode, ``(V, T, C, H, W)`` in test mode
  (V = num_clips temporal clips x crops of the transform, clip-major; C = 3 for RGB frames, 2 for
  the quantised (x, y) optical flow of a ``"flow"`` list); float32 normalised
  with ``tsn.layout.normalize_clips`` when ``mean`` and ``std`` are given. uint8 is the
  default because it moves a quarter of the bytes through the loader; the engine normalises
  on the device.
- ``label`` and ``index``: the list label and list index of the video the clip *really* comes
  from. With ``on_error="skip"`` a sample whose video cannot be read is replaced by the next
  readable video of the list (index + 1, + 2, ... wrapping around), and label and index are
  that video's: labels never shift.
- ``requested``: the list index the sample was asked for; it differs from ``index`` exactly when
  that video was unreadable and replaced. Metrics count a video only where the two are equal
  (each readable list entry is counted once, at its own index, however often it stands in for a
  bad one), and count the others as skipped.
- ``skipped``: ``SkippedVideo(path, reason)`` for every unreadable video passed over while
  producing this sample (empty almost always). A video found bad once is remembered by this
  process and not decoded again, but still reported each time it is passed over, so samples
  and reports do not depend on which worker saw the file first.

Randomness: every random choice (train frame indices, crop, flip) comes from
``np.random.default_rng([seed, epoch, index, video])`` where ``index`` is the requested
sample and ``video`` the list index actually read (equal unless a video was skipped). A
sample therefore depends only on (seed, epoch, index), never on the number of workers or the
order in which they ask. The epoch comes from the key: ``dataset[ClipKey(epoch, index)]``
(what ``tsn.data.loader.EpochSampler`` yields, so persistent workers see the current epoch)
or ``dataset[index]`` with the epoch of the last ``set_epoch`` call in this process.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from tsn.data.lists import LIST_FORMATS, VideoRecord
from tsn.data.sampling import TRAIN_BOUNDS, test_indices, train_indices, val_indices
from tsn.data.transforms import ClipTransform, DecodesResized, FrameTransform, MultiCrop, to_tensor_clip
from tsn.errors import UserError
from tsn.io import VideoInfo, VideoReadError, count_flow_frames, probe, read, read_first, read_flow
from tsn.layout import normalize_clips
from tsn.runtime.pools import thread_pool

MODES = ("train", "val", "test")
# What a Dataset reads: the list formats, and "flow": a rawframes list of flow folders (tools/extract_flow.py),
# whose frame counts count flow pairs.
FORMATS = LIST_FORMATS + ("flow",)
ON_ERROR = ("skip", "raise")


class SkippedVideo(NamedTuple):
    """A video that could not be read and was replaced by another: its path and why."""

    path: str
    reason: str


class ClipKey(NamedTuple):
    """A dataset key carrying its epoch, so that workers need no ``set_epoch``."""

    epoch: int
    index: int


class ClipSample(NamedTuple):
    """One video: clip (T,3,H,W) or (V,T,3,H,W), its label and list index, the videos skipped for it, and the
    list index it was asked for (``index`` unless that one was unreadable)."""

    clip: torch.Tensor
    label: int
    index: int
    skipped: tuple[SkippedVideo, ...]
    requested: int


class ClipBatch(NamedTuple):
    """A batch: clips (B,T,3,H,W) or (B,V,T,3,H,W), int64 labels (B,), int64 list indices read (B,), all skips,
    int64 list indices asked for (B,) (equal to ``indices`` where no video was replaced)."""

    clips: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    skipped: tuple[SkippedVideo, ...]
    requested: torch.Tensor

    @property
    def replaced(self) -> torch.Tensor:
        """Bool (B,): the samples that stand in for an unreadable video (their own video counts elsewhere)."""
        return self.indices != self.requested


class AllVideosFailedError(UserError, RuntimeError):
    """Every video of the list failed to load, so no sample can be produced."""


def _non_negative(value: int, name: str) -> int:
    number = operator.index(value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}")
    return number


def decoder_threads() -> int:
    """Decoding threads for one video reader in this process: its share of the CPUs.

    The processes that decode at once are the loader workers of every local rank (torchrun's
    ``LOCAL_WORLD_SIZE``; without workers the rank's own process), and the CPUs usable by this
    process are shared out evenly among them, at least one thread each. With many workers that is
    one thread, as mmaction2 uses; with fewer workers than CPUs the spare CPUs decode too (one
    process on this 2-core machine: 2 threads).
    """
    worker = torch.utils.data.get_worker_info()
    workers = worker.num_workers if worker is not None else 1
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // (workers * ranks))


class ClipDataset(torch.utils.data.Dataset):
    """TSN clips from a list of videos (``format="video"``), of frame folders (``"rawframes"``) or of
    flow folders (``"flow"``).

    In: list records (paths relative to ``root``), the reader ``backend`` for videos
    (``"auto"``, ``"pyav"``, ``"decord"``, ``"opencv"``; frame folders always use ``"rawframes"``),
    ``mode`` (``"train"`` random indices within ``train_bounds`` segments, ``"val"`` segment
    middles, ``"test"`` ``num_clips`` temporal clips), K = ``num_segments``, L = ``new_length``, a transform
    ``(frames, rng) -> frames`` from ``tsn.data.transforms`` (a multi-crop one in test mode
    adds the crop views), ``on_error`` (``"skip"`` or ``"raise"``), the augmentation ``seed``
    and optional ``mean``/``std`` for float output. Out: ``ClipSample`` (module docstring).

    Videos are probed once, on their first read and in the same decoding pass where PyAV or decord
    reads them (``tsn.io.read_first``; ``tsn.io.probe`` says how the frames that really decode
    are counted), and the ``VideoInfo`` kept per index in this object; frame folders take their frame count
    from the list (and are probed once too, on their first read, to check indices and frame
    size without listing the folder again). Videos are read with ``decoder_threads()`` threads
    (frame folders: that many JPEGs decoded at once) and, when the transform
    has a ``decode_size`` (``tsn.data.transforms.DecodesResized``), at that size where the
    backend can decode at it (PyAV, decord).
    """

    def __init__(self, records: Sequence[VideoRecord], root: str | os.PathLike, format: str, backend: str,
                 mode: str, num_segments: int, new_length: int, transform: FrameTransform, num_clips: int = 1,
                 on_error: str = "skip", seed: int = 0, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, train_bounds: str = "fractional",
                 label_mirror: Sequence[int] | None = None) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if num_segments < 1 or new_length < 1 or num_clips < 1:
            raise ValueError(f"num_segments, new_length and num_clips must be >= 1, "
                             f"got {num_segments}, {new_length}, {num_clips}")
        if num_clips != 1 and mode != "test":
            raise ValueError(f"num_clips={num_clips} needs mode 'test', got mode {mode!r}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std for float output, or neither for uint8")
        if train_bounds not in TRAIN_BOUNDS:
            raise ValueError(f"train_bounds must be one of {TRAIN_BOUNDS}, got {train_bounds!r}")
        if not records:
            raise ValueError(f"no records to load from {root}")
        self.records = list(records)
        self.root = Path(root)
        self.format = format
        self.backend = "rawframes" if format in ("rawframes", "flow") else backend
        self.mode = mode
        self.num_segments = num_segments
        self.new_length = new_length
        self.transform = transform
        self.num_clips = num_clips
        self.train_bounds = train_bounds
        self.label_mirror = None if label_mirror is None else tuple(int(c) for c in label_mirror)
        self.on_error = on_error
        self.seed = _non_negative(seed, "seed")
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.epoch = 0
        # Per process (each loader worker has its own): probe results and videos known bad.
        self._infos: dict[int, VideoInfo] = {}
        self._bad: dict[int, SkippedVideo] = {}

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by plain integer keys in this process (loader workers get it from ``ClipKey``)."""
        self.epoch = _non_negative(epoch, "epoch")

    def path(self, index: int) -> str:
        """Full path of record ``index``: ``root / record.path``."""
        return str(self.root / self.records[index].path)

    def num_frames(self, index: int) -> int:
        """Frames of record ``index``: the list's count for frame and flow folders, else the (cached) probe's."""
        record = self.records[index]
        if self.format in ("rawframes", "flow") and record.num_frames is not None:
            return record.num_frames
        if self.format == "flow":
            return count_flow_frames(self.path(index))
        return self.video_info(index).num_frames

    def video_info(self, index: int) -> VideoInfo:
        """The (cached) probe of record ``index``: frame size, count and rate, backend, frame index."""
        info = self._infos.get(index)
        if info is None:
            info = self._infos[index] = probe(self.path(index), self.backend)
        return info

    def segment_seconds(self, sample: int = 16) -> float | None:
        """The median time between two segments of a clip, ``duration / num_segments``, over ``sample`` videos
        spread over the list (probed, and cached as reads would); None for frame folders or where no sampled
        video has a frame rate. A stream is fed to a model at about this spacing (``tsn.apps.stream``)."""
        if self.format != "video":
            return None
        picks = np.unique(np.linspace(0, len(self.records) - 1, min(sample, len(self.records))).round().astype(int))
        spacings = []
        for index in picks.tolist():
            try:
                info = self.video_info(index)
            except (VideoReadError, OSError):
                continue
            if info.fps > 0 and info.num_frames > 0:
                spacings.append(info.num_frames / info.fps / self.num_segments)
        return float(np.median(spacings)) if spacings else None

    def frame_indices(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """0-based frames of record ``index`` for this mode: int64 (T,) or (num_clips, T) in test mode."""
        return self._indices(index, self.num_frames(index), rng)

    def _indices(self, index: int, num_frames: int, rng: np.random.Generator,
                 frames: tuple[int, int] | None = None) -> np.ndarray:
        """``frame_indices`` for a video of ``num_frames`` frames; with ``frames = (first, stop)`` (test
        mode), the test views of the part ``first .. stop - 1`` as if it were the whole video."""
        if num_frames < 1:
            raise VideoReadError(self.path(index), "no frames to sample")
        if frames is not None:
            first, stop = frames
            if self.mode != "test" or not 0 <= first < stop <= num_frames:
                raise ValueError(f"frames {first}..{stop - 1} of {self.path(index)} ({num_frames} frames, "
                                 f"mode {self.mode!r}): a window needs test mode and frames inside the video")
            return first + test_indices(stop - first, self.num_segments, self.new_length, self.num_clips)
        if self.mode == "train":
            return train_indices(num_frames, self.num_segments, self.new_length, rng=rng, bounds=self.train_bounds)
        if self.mode == "val":
            return val_indices(num_frames, self.num_segments, self.new_length)
        return test_indices(num_frames, self.num_segments, self.new_length, self.num_clips)

    def load(self, index: int, rng: np.random.Generator, threads: int | None = None,
             frames: tuple[int, int] | None = None) -> torch.Tensor:
        """Read, transform and lay out record ``index`` (no error handling): uint8 or float clip.

        ``threads``: decoding threads for this read (None: ``decoder_threads()``). ``frames``: in test
        mode, sample only frames ``first .. stop - 1`` of the video (a window of a long video): only the
        sampled frames are decoded, whatever the video's length.
        """
        return self._load(index, rng, threads, frames)[0]

    def view_mirror(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With ``label_mirror`` and a test transform whose views include mirrored ones: bool ``(V,)`` (which
        views are mirrored, clip-major) and int64 ``(classes,)`` (class c of a mirrored view is class
        ``label_mirror[c]`` of the video), for ``tsn.evaluation.evaluate.view_scores``; else None."""
        if self.label_mirror is None or self.mode != "test" or not isinstance(self.transform, MultiCrop):
            return None
        views = torch.tensor(self.transform.mirrored_views() * self.num_clips)  # clip-major: crops repeat per clip
        if not views.any():
            return None
        return views, torch.tensor(self.label_mirror, dtype=torch.int64)

    def _load(self, index: int, rng: np.random.Generator, threads: int | None = None,
              frames: tuple[int, int] | None = None) -> tuple[torch.Tensor, bool]:
        """``load``, and whether a training flip mirrored the clip."""
        path = self.path(index)
        threads = threads if threads is not None else decoder_threads()
        # Frames at the size the transform scales to anyway, where the backend can decode at it.
        size_for = self.transform.decode_size if isinstance(self.transform, DecodesResized) else None
        info = self._infos.get(index)
        if self.format == "flow":
            indices = self._indices(index, self.num_frames(index), rng, frames)
            clip_frames = read_flow(path, indices.reshape(-1), threads)  # (C*T, H, W, 2)
        elif info is None and self.format == "video":
            # First read of this video in this process: probed and read in one pass (tsn.io.read_first).
            # ``choose`` rewinds the generator so that a second call, after a failed first
            # attempt, draws the same indices and leaves ``rng`` where a plain read would.
            start = rng.bit_generator.state

            def choose(num_frames: int) -> np.ndarray:
                rng.bit_generator.state = start
                return self._indices(index, num_frames, rng, frames)

            # indices (T,) or (C, T) -> frames (C*T, H, W, 3)
            info, indices, clip_frames = read_first(path, choose, self.backend, size_for, threads)
            self._infos[index] = info
        else:
            # A frame folder is probed once (listing, first and last frame) and cached: without it
            # every read would list the folder again to check the indices.
            info = self.video_info(index)
            indices = self._indices(index, self.num_frames(index), rng, frames)
            size = size_for(info.height, info.width) if size_for is not None else None
            # (T,) or (C, T) indices -> frames (C*T, H, W, 3)
            clip_frames = read(path, indices.reshape(-1), backend=self.backend, info=info, size=size,
                               threads=threads)
        mirrored = False
        if isinstance(self.transform, ClipTransform):
            out, mirrored = self.transform.mirrored(clip_frames, rng)
        else:
            out = self.transform(clip_frames, rng)
        if self.mode != "test":
            if out.ndim != 4:
                raise ValueError(f"mode {self.mode!r} needs a transform returning (T, h, w, C), got {out.shape}")
            clip = to_tensor_clip(out)  # (T, C, h, w)
        else:
            if out.ndim == 4:
                out = out[None]  # a single-view transform: (1, C*T, h, w, channels)
            crops, _, height, width, channels = out.shape
            steps = indices.shape[1]
            views = torch.from_numpy(np.ascontiguousarray(out))
            views = views.reshape(crops, self.num_clips, steps, height, width, channels)
            # (crops, C, T, h, w, ch) -> (C, crops, T, ch, h, w) -> (V, T, ch, h, w), clip-major views
            clip = views.permute(1, 0, 2, 5, 3, 4).reshape(self.num_clips * crops, steps, channels, height, width)
        if self.mean is not None and self.std is not None:
            clip = normalize_clips(clip, self.mean, self.std)
        return clip, mirrored

    def __getitem__(self, key: int | ClipKey) -> ClipSample:
        """The sample for list index ``key`` (or ``ClipKey(epoch, index)``); see the module docstring."""
        return self._sample(key, None)

    def __getitems__(self, keys: Sequence[int | ClipKey]) -> list[ClipSample]:
        """The samples for ``keys`` (what the DataLoader asks for one batch), the same as ``self[key]`` each.

        When ``decoder_threads()`` > 1 (fewer loading processes than CPUs), the clips are decoded
        that many at a time on threads, each with one decoding thread: the decoders release the GIL,
        and parallel clips scale better than threads inside one decoder (decord with 2 threads
        spent 12 % more CPU per clip than with 1 here).
        """
        threads = decoder_threads()
        if threads < 2 or len(keys) < 2:
            return [self._sample(key, None) for key in keys]
        return list(thread_pool("clip", threads).map(lambda key: self._sample(key, 1), keys))

    def _sample(self, key: int | ClipKey, threads: int | None) -> ClipSample:
        """``self[key]``, read with ``threads`` decoding threads (None: ``decoder_threads()``)."""
        if isinstance(key, ClipKey):
            epoch, index = _non_negative(key.epoch, "epoch"), operator.index(key.index)
        else:
            epoch, index = self.epoch, operator.index(key)
        size = len(self.records)
        if not 0 <= index < size:
            raise IndexError(f"index {index} out of range for {size} videos")
        skipped: list[SkippedVideo] = []
        for step in range(size):
            video = (index + step) % size
            bad = self._bad.get(video)
            if bad is None:
                rng = np.random.default_rng([self.seed, epoch, index, video])
                try:
                    clip, mirrored = self._load(video, rng, threads)
                except (VideoReadError, OSError) as err:
                    reason = err.reason if isinstance(err, VideoReadError) else f"{type(err).__name__}: {err}"
                    if self.on_error == "raise":
                        if isinstance(err, VideoReadError):
                            raise
                        raise VideoReadError(self.path(video), reason) from err
                    bad = SkippedVideo(self.path(video), reason)
                    self._bad[video] = bad
                else:
                    label = int(self.records[video].label)
                    if mirrored and self.label_mirror is not None:
                        label = self.label_mirror[label]  # "left to right" mirrored is "right to left"
                    return ClipSample(clip, label, video, tuple(skipped), index)
            skipped.append(bad)
        first = skipped[0]
        raise AllVideosFailedError(f"all {size} videos under {self.root} failed to load "
                                   f"(first: {first.path}: {first.reason})")


def collate_clips(samples: Sequence[ClipSample]) -> ClipBatch:
    """Stack samples into a ``ClipBatch``: clips (B, ...), int64 labels and indices (B,), skips concatenated,
    int64 requested indices (B,)."""
    # numpy's single-threaded copy: torch.stack runs on the intra-op threads, which are slow to
    # come by in the main process of a busy machine.
    # (B, T, 3, H, W) or (B, V, T, 3, H, W)
    clips = torch.from_numpy(np.stack([sample.clip.numpy() for sample in samples]))
    labels = torch.tensor([sample.label for sample in samples], dtype=torch.int64)
    indices = torch.tensor([sample.index for sample in samples], dtype=torch.int64)
    skipped = tuple(skip for sample in samples for skip in sample.skipped)
    requested = torch.tensor([sample.requested for sample in samples], dtype=torch.int64)
    return ClipBatch(clips, labels, indices, skipped, requested)
