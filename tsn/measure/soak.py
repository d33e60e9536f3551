"""Memory over a long run (``tools/soak.py``): loader workers over many epochs, and a training process over
many steps (``train_soak``).

``soak`` reads the same list for ``epochs`` epochs through ``ClipDataset`` (training sampling and
augmentation, so new frames every epoch) and ``build_dataloader`` (persistent workers, as in
training), with one reader backend, and measures the resident memory (``VmRSS`` in
``/proc/<pid>/status``) of every loader worker process and of the main process:

- ``start``: after the first epoch (the warm-up: imports, decoder libraries and their buffers,
  the allocator's first pools);
- ``end``: after the last epoch.

A reader that leaks (decord ``VideoReader`` objects kept alive: decord issues 157, 208) grows
with every video read, so ``end - start`` over many epochs shows it; flat memory is a few MB of
allocator noise. Workers are the children of the main process's fork server (``worker_pids``; the
multiprocessing resource tracker, also a child, is left out). Linux only (``/proc``).

``train_soak`` runs training steps of a TSN on new random clips every step and samples the process's
resident memory after every step: an allocator that keeps freed blocks (``tsn.runtime.allocator``) must level off
after the first steps, not grow with them. It reports the mean of the first and of the last tenth of the
samples and their ratio.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from tsn.data.dataset import ClipDataset
from tsn.data.lists import VideoRecord
from tsn.data.loader import build_dataloader, set_loader_epoch
from tsn.data.transforms import train_transform
from tsn.runtime.allocator import strategy as allocator_strategy


@dataclass(frozen=True)
class SoakResult:
    """Memory in MB (per worker, in worker order; and the main process) after the first and the last epoch,
    and every worker's after each epoch (a leak grows with every epoch; allocator pools level off)."""

    backend: str
    epochs: int
    clips_per_epoch: int
    workers: int
    worker_rss_start_mb: tuple[float, ...]
    worker_rss_end_mb: tuple[float, ...]
    main_rss_start_mb: float
    main_rss_end_mb: float
    seconds: float
    worker_rss_by_epoch_mb: tuple[tuple[float, ...], ...]

    @property
    def max_worker_growth_mb(self) -> float:
        """The largest growth of one worker from start to end (negative: it shrank)."""
        return max(end - start for start, end in zip(self.worker_rss_start_mb, self.worker_rss_end_mb))

    @property
    def max_worker_late_growth_mb(self) -> float:
        """The largest growth of one worker over the second half of the epochs: a leak keeps growing
        there, allocator pools have levelled off."""
        middle = self.worker_rss_by_epoch_mb[len(self.worker_rss_by_epoch_mb) // 2]
        return max(end - mid for mid, end in zip(middle, self.worker_rss_end_mb))

    def as_dict(self) -> dict[str, object]:
        """Plain values for one JSON line, the growth included."""
        return {"backend": self.backend, "epochs": self.epochs, "clips_per_epoch": self.clips_per_epoch,
                "workers": self.workers, "worker_rss_start_mb": list(self.worker_rss_start_mb),
                "worker_rss_end_mb": list(self.worker_rss_end_mb),
                "max_worker_growth_mb": round(self.max_worker_growth_mb, 1),
                "max_worker_late_growth_mb": round(self.max_worker_late_growth_mb, 1),
                "main_rss_start_mb": self.main_rss_start_mb, "main_rss_end_mb": self.main_rss_end_mb,
                "seconds": round(self.seconds, 1),
                "worker_rss_by_epoch_mb": [list(epoch) for epoch in self.worker_rss_by_epoch_mb]}


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (``VmRSS`` of ``/proc/<pid>/status``, given in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def worker_pids(parent: int) -> list[int]:
    """Loader workers of ``parent``, sorted by pid: its children that run the same program as it (forked) and
    the children of its fork server (``tsn.data.loader.worker_context``)."""
    command = _cmdline(parent)
    workers = []
    for pid in _children(parent):
        child = _cmdline(pid)
        if child == command:
            workers.append(pid)
        elif b"multiprocessing.forkserver" in child:
            workers.extend(_children(pid))
    return sorted(workers)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (every thread's), sorted; empty when it has exited."""
    children: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children.update(int(child) for child in (task / "children").read_text().split())
    except FileNotFoundError:
        return []
    return sorted(children)


def _cmdline(pid: int) -> bytes:
    """The command line of ``pid`` (NUL-separated); empty when it has just exited."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def soak(records: Sequence[VideoRecord], root: str | os.PathLike, backend: str, epochs: int, workers: int,
         num_segments: int = 8, input_size: int = 112, batch_size: int = 4, seed: int = 0,
         progress: bool = True) -> SoakResult:
    """Read ``records`` (video files under ``root``) ``epochs`` times with reader ``backend`` through
    ``workers`` persistent loader workers; their memory after the first and the last epoch.

    Training sampling (``num_segments`` random frames) and TSN's multi-scale crop to ``input_size``;
    a video that cannot be read is an error (``on_error="raise"``): a soak needs every read to happen.
    """
    if epochs < 2:
        raise ValueError(f"epochs must be >= 2 (the first is the warm-up), got {epochs}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1: the soak measures worker processes, got {workers}")
    dataset = ClipDataset(records, root, "video", backend, "train", num_segments, 1,
                          train_transform("multiscale", input_size, input_size), on_error="raise", seed=seed)
    loader = build_dataloader(dataset, batch_size, shuffle=True, num_workers=workers, seed=seed, drop_last=False,
                              pin_memory=False)
    # Children that exist already (another loader's workers) are not this loader's.
    others = set(worker_pids(os.getpid()))
    started = time.monotonic()
    by_epoch: list[dict[int, float]] = []
    main_start = 0.0
    for epoch in tqdm(range(epochs), desc=f"soak {backend}", unit="epoch", disable=not progress):
        set_loader_epoch(loader, epoch)
        for _ in loader:
            pass
        by_epoch.append({pid: rss_mb(pid) for pid in worker_pids(os.getpid()) if pid not in others})
        if epoch == 0:
            main_start = rss_mb(os.getpid())
    start, end = by_epoch[0], by_epoch[-1]
    if any(sorted(epoch) != sorted(start) for epoch in by_epoch) or len(start) != workers:
        raise RuntimeError(f"loader workers changed during the soak: {sorted(start)} after epoch 1, "
                           f"{sorted(end)} at the end (expected {workers} persistent workers)")
    pids = sorted(start)
    return SoakResult(backend, epochs, len(dataset), workers, tuple(start[pid] for pid in pids),
                      tuple(end[pid] for pid in pids), main_start, rss_mb(os.getpid()),
                      time.monotonic() - started, tuple(tuple(epoch[pid] for pid in pids) for epoch in by_epoch))


def train_soak(backbone: str, steps: int, batch_size: int = 8, num_segments: int = 8, input_size: int = 224,
               channels_last: bool = True, seed: int = 0, progress: bool = True) -> dict[str, object]:
    """``steps`` training steps (forward, loss, backward, SGD) of a TSN with a random ``backbone`` on new random
    clips ``(batch_size, num_segments, 3, input_size, input_size)`` every step; the process's resident memory
    (MB) after each step, summarised: mean of the first and the last tenth of the steps, their ratio, peak."""
    import numpy as np
    import torch

    from tsn.data.prefetch import channels_last_clips
    from tsn.training.trainer import LossRecipe, compute_loss, optimizer_step
    from tsn.models import build_model

    if steps < 10:
        raise ValueError(f"steps must be >= 10 (a tenth of them is the start), got {steps}")
    torch.manual_seed(seed)
    # TSN's average of scores and dropout 0.5, with every BatchNorm training: the soak's model since it began
    model = build_model(backbone=backbone, pretrained=False, num_classes=400, num_segments=num_segments,
                        consensus="avg", dropout=0.5)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(seed)
    recipe, mix_rng, device = LossRecipe(), np.random.default_rng(seed), torch.device("cpu")
    model.train()
    samples = []
    started = time.monotonic()
    for _ in tqdm(range(steps), desc=f"soak {backbone}", unit="step", disable=not progress):
        clips = torch.randn((batch_size, num_segments, 3, input_size, input_size), generator=generator)
        clips = channels_last_clips(clips) if channels_last else clips  # (B, T, C, H, W)
        labels = torch.randint(0, 400, (batch_size,), generator=generator)
        _, loss = compute_loss(model, model, clips, labels, recipe, mix_rng, device)
        optimizer_step(loss, model, optimizer, scaler, None)
        samples.append(rss_mb(os.getpid()))
    seconds = time.monotonic() - started
    tenth = max(1, steps // 10)
    first, last = float(np.mean(samples[:tenth])), float(np.mean(samples[-tenth:]))
    return {"mode": "train", "backbone": backbone, "allocator": allocator_strategy(), "steps": steps,
            "batch": batch_size, "segments": num_segments, "input_size": input_size,
            "seconds": round(seconds, 1), "images_per_s": round(steps * batch_size * num_segments / seconds, 2),
            "rss_first_tenth_mb": round(first, 1), "rss_last_tenth_mb": round(last, 1),
            "last_over_first": round(last / first, 4), "rss_peak_mb": max(samples),
            "rss_every_tenth_mb": samples[tenth - 1::tenth]}
