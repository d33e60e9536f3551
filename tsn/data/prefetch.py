"""Batches onto the device one step ahead: the next batch's copy and normalisation overlap the current step.

``DevicePrefetcher(loader, device, mean, std, channels_last)`` iterates a loader of ``ClipBatch``
and yields ``DeviceBatch(clips, labels, skipped)``: clips float ``(B, T, C, H, W)`` normalised on
the device (``tsn.layout.normalize_clips``), labels int64 ``(B,)``, the batch's skipped videos.

On CUDA the host-to-device copy (non-blocking, from the loader's pinned memory) and the
normalisation of batch i+1 are issued on a side stream right after batch i is handed out, so they
run while the GPU works on step i; the compute stream waits for the side stream before it uses a
batch, and ``record_stream`` keeps the caching allocator from reusing its memory too early. On the
CPU there is nothing to overlap: each batch is normalised when it is asked for.

``channels_last``: clips are laid out in memory as ``(B, T, H, W, C)`` (the shape stays
``(B, T, C, H, W)``), so that the model's ``reshape`` to ``(B*T, C, H, W)`` is a view in
``torch.channels_last`` format and the first convolution of a channels-last model gets its input
without another conversion.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple, Sequence

import torch

from tsn.data.dataset import ClipBatch, SkippedVideo
from tsn.layout import normalize_clips


class DeviceBatch(NamedTuple):
    """A batch on the device: float clips (B, T, C, H, W), int64 labels (B,), skipped videos."""

    clips: torch.Tensor
    labels: torch.Tensor
    skipped: tuple[SkippedVideo, ...]


def channels_last_clips(clips: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> the same values and shape, stored as (B, T, H, W, C), so that
    ``reshape(B*T, C, H, W)`` is a ``torch.channels_last`` view."""
    batch, steps, channels, height, width = clips.shape
    out = torch.empty((batch, steps, height, width, channels), dtype=clips.dtype, device=clips.device)
    out = out.permute(0, 1, 4, 2, 3)  # (B, T, H, W, C) memory seen as (B, T, C, H, W)
    out.copy_(clips)
    return out


def to_device(batch: ClipBatch, device: torch.device, mean: Sequence[float], std: Sequence[float],
              channels_last: bool = False) -> DeviceBatch:
    """uint8 clips and labels of ``batch`` to ``device`` (non-blocking), clips normalised there."""
    clips = batch.clips.to(device, non_blocking=True)
    labels = batch.labels.to(device, non_blocking=True)
    if not clips.is_floating_point():
        clips = normalize_clips(clips, mean, std)  # (B, T, C, H, W) float32
    if channels_last and clips.dim() == 5:
        clips = channels_last_clips(clips)
    return DeviceBatch(clips, labels, tuple(batch.skipped))


class DevicePrefetcher:
    """Iterate ``loader`` (``ClipBatch`` items) as ``DeviceBatch`` items, one batch ahead on CUDA."""

    def __init__(self, loader: Iterable[ClipBatch], device: torch.device, mean: Sequence[float],
                 std: Sequence[float], channels_last: bool = False) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[DeviceBatch]:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield to_device(batch, self.device, self.mean, self.std, self.channels_last)
            return
        yield from self._cuda_iter()

    def _cuda_iter(self) -> Iterator[DeviceBatch]:
        side = torch.cuda.Stream(self.device)
        compute = torch.cuda.current_stream(self.device)
        batches = iter(self.loader)

        def issue() -> DeviceBatch | None:
            """The next batch's copy and normalisation, queued on the side stream (None at the end)."""
            batch = next(batches, None)
            if batch is None:
                return None
            # Fresh tensors from the side stream's memory pool: no need to wait for the compute stream.
            with torch.cuda.stream(side):
                return to_device(batch, self.device, self.mean, self.std, self.channels_last)

        ahead = issue()
        while ahead is not None:
            compute.wait_stream(side)
            ahead.clips.record_stream(compute)
            ahead.labels.record_stream(compute)
            current = ahead
            yield current
            # The consumer has queued its step on the compute stream: copy the next batch meanwhile.
            ahead = issue()
