"""Throughput measurements: the data loader, one model's train step, a trained model's inference, and
end-to-end training.

Each benchmark returns a flat ``dict`` of plain numbers and strings (``tools/benchmark.py`` prints it
as one JSON line, or as a table with ``format_table``). The ones that start from a config or a
checkpoint (``loader_benchmark``, ``train_benchmark``, ``inference_benchmark``, ``deployed_benchmark``)
live in ``tsn.measure.build`` and time what they build with the functions here:

- ``loader_benchmark`` (``loader_timings``): clips/s through the real ``ClipDataset`` and
  ``DataLoader`` that training uses (``build_dataset`` / ``build_loader``). The same clips (the
  first ``clips`` of epoch 0's order, with the same random frames and crops) are read ``passes``
  times by the same loader (persistent workers). The first pass is the warm-up: it starts the workers and probes every
  video (frame count, size), which a ``ClipDataset`` does once per process and then caches;
  ``clips_per_s`` is the median of the later passes (every epoch after the first: the median
  because other processes on a shared machine make single passes noisy), ``clips_per_s_first``
  the first pass.
- ``model_benchmark``: train steps (forward, loss, backward, SGD step) of a TSN on random input
  held on the device: images/s and clips/s, after ``warmup`` untimed steps, and the process's CPU
  seconds in those steps with the kernel's share of them (``kernel_share``: what a memory allocator
  that keeps freed blocks can remove; README, "The allocator").
- ``train_benchmark`` (``train_timings``): training steps/s with the real loader, and with one batch held on the
  device (the model's own rate), and their ratio (1.0: the loader keeps up). ``profile_dir``
  adds a ``torch.profiler`` trace of three more steps (CPU and, on CUDA, GPU activity) that
  TensorBoard's profiler plugin opens.

Timings on CUDA synchronise the device before reading the clock. Nothing here checks a number:
the tool reports, the reader compares (same machine, same run).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tsn.data.loader import set_loader_epoch
from tsn.evaluation.evaluate import autocast_context
from tsn.evaluation.deployed import InputSpec
from tsn.data.prefetch import DeviceBatch, DevicePrefetcher, channels_last_clips
from tsn.training.trainer import LossRecipe, compute_loss, optimizer_step
from tsn.models import build_model
from tsn.runtime.device import resolve_device

AMP_CHOICES = ("none", "bf16", "fp16")


def check_amp(amp: str) -> None:
    """ValueError unless ``amp`` is one of ``AMP_CHOICES``."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_timings(loader: DataLoader, wanted: int, passes: int) -> dict[str, Any]:
    """Clips/s of ``loader``: ``passes`` >= 1 reads of its first ``wanted`` clips (with ``drop_last`` in
    training, whole batches only); see the module docstring."""
    results, cpu_ms = [], []
    for _ in range(passes):
        set_loader_epoch(loader, 0)  # the same clips, frames and crops every pass
        cpu_started = time.process_time()
        results.append(_time_pass(iter(loader), wanted))
        cpu_ms.append(1000 * (time.process_time() - cpu_started) / max(1, results[-1][0]))
    rates = [count / seconds if seconds > 0 else 0.0 for count, seconds, _, _ in results]
    later = rates[1:] or rates
    # this process's CPU time, every thread: the whole cost of a clip only without loader workers
    cpu_later = cpu_ms[1:] or cpu_ms
    return {
        "cpus": os.cpu_count(), "clips": results[-1][0],
        "clips_per_s": round(float(np.median(later)), 3), "clips_per_s_first": round(rates[0], 3),
        "pass_clips_per_s": [round(rate, 3) for rate in rates],
        "cpu_ms_per_clip": round(float(np.median(cpu_later)), 1) if loader.num_workers == 0 else None,
        "clip_shape": list(results[-1][2]),
        "skipped": sum(result[3] for result in results),
    }


def _time_pass(batches: Iterator, wanted: int) -> tuple[int, float, tuple[int, ...], int]:
    """(clips read, seconds, clip shape, skipped videos) for one pass that stops after ``wanted`` clips."""
    seen = skipped = 0
    shape: tuple[int, ...] = ()
    started = time.perf_counter()
    for batch in batches:
        shape = tuple(batch.clips.shape[1:])
        skipped += len(batch.skipped)
        seen += batch.clips.shape[0]
        if seen >= wanted:
            break
    return seen, time.perf_counter() - started, shape, skipped


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool, compile_model: bool) -> nn.Module:
    """``model`` on ``device`` (channels-last weights when asked), compiled when asked;
    returns the module to call (the compiled one or ``model``)."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def time_steps(step: Callable[[int], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step(i)`` after ``warmup`` untimed ones."""
    for number in range(warmup):
        step(number)
    _sync(device)
    started = time.perf_counter()
    for number in range(steps):
        step(warmup + number)
    _sync(device)
    return time.perf_counter() - started


def model_benchmark(backbone: str, batch: int = 32, segments: int = 8, amp: str = "none",
                    channels_last: bool = False, compile_model: bool = False, steps: int = 10,
                    input_size: int = 224, warmup: int = 3, num_classes: int = 400,
                    device: torch.device | None = None, temporal: str = "none") -> dict[str, Any]:
    """Train-step throughput of a TSN (``backbone``, random weights, GAP head; ``temporal`` "tsm" shifts
    as ``model.temporal``) on random input on ``device``.

    ``amp`` acts on CUDA only (as in training); on the CPU it is reported as ``"none"``.
    """
    check_amp(amp)
    device = device or resolve_device("auto")
    on_cuda = device.type == "cuda"
    # the model the README's tables were measured with: TSN's average of scores, dropout 0.5
    model = build_model(backbone=backbone, pretrained=False, num_classes=num_classes, num_segments=segments,
                        consensus="avg", dropout=0.5, temporal=temporal)
    net = prepare_model(model, device, channels_last, compile_model)
    recipe = LossRecipe(amp=amp)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16" and on_cuda)
    generator = torch.Generator().manual_seed(0)
    clips = torch.randn((batch, segments, 3, input_size, input_size), generator=generator).to(device)
    if channels_last:
        clips = channels_last_clips(clips)  # (B, T, C, H, W) stored as (B, T, H, W, C)
    labels = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    mix_rng = np.random.default_rng(0)
    net.train()

    def step(_: int) -> None:
        _, loss = compute_loss(net, model, clips, labels, recipe, mix_rng, device)
        optimizer_step(loss, model, optimizer, scaler, None)

    time_steps(step, 0, warmup, device)  # warm-up apart, so that the CPU seconds cover the timed steps only
    cpu_before = os.times()
    seconds = time_steps(step, steps, 0, device)
    cpu = cpu_seconds(cpu_before, os.times())
    return {
        "mode": "model", "backbone": backbone, "temporal": temporal, "device": device_name(device), "batch": batch,
        "segments": segments, "input_size": input_size, "amp": amp if on_cuda else "none",
        "channels_last": channels_last, "compile": compile_model, "steps": steps,
        "seconds": round(seconds, 3), "images_per_s": round(steps * batch * segments / seconds, 2),
        "clips_per_s": round(steps * batch / seconds, 2), **cpu,
    }


def cpu_seconds(before: os.times_result, after: os.times_result) -> dict[str, float]:
    """The process's user and kernel CPU seconds (all its threads) from ``before`` to ``after`` (two
    ``os.times()``), and the kernel's share of their sum."""
    user, system = after.user - before.user, after.system - before.system
    share = system / (user + system) if user + system > 0 else 0.0
    return {"cpu_user_s": round(user, 2), "cpu_system_s": round(system, 2), "kernel_share": round(share, 3)}


def forward_timings(model: nn.Module, clips: torch.Tensor, amp: str = "none", channels_last: bool = False,
                    steps: int = 10, warmup: int = 3, device: torch.device | None = None) -> float:
    """Seconds of ``steps`` forwards of ``model`` (no gradients) over random ``clips`` ``(B, T, C, H, W)`` on
    ``device`` after ``warmup`` untimed ones; ``amp`` acts on CUDA only."""
    device = device or resolve_device("auto")
    net = prepare_model(model, device, channels_last, compile_model=False)
    clips = clips.to(device)
    if channels_last:
        clips = channels_last_clips(clips)

    def step(_: int) -> None:
        with torch.inference_mode(), autocast_context(device, amp):
            net(clips)

    return time_steps(step, steps, warmup, device)


def deployed_timings(run: Callable[[np.ndarray], np.ndarray], spec: InputSpec, batch: int = 1, steps: int = 10,
                     warmup: int = 3) -> dict[str, Any]:
    """CPU clips/s and CPU ms per clip of ``run`` (uint8 frames -> probabilities) on random frames of ``spec``'s
    shape, ``batch`` clips a call. CPU time is this process's, all threads together."""
    frames = spec.random(batch).numpy()  # (B, T, C, H, W) uint8
    for _ in range(warmup):
        run(frames)
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(steps):
        run(frames)
    seconds, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started
    clips = steps * batch
    return {
        "device": device_name(torch.device("cpu")),
        "batch": batch, "input": [batch, spec.frames, spec.channels, spec.size, spec.size], "steps": steps,
        "seconds": round(seconds, 3), "clips_per_s": round(clips / seconds, 2),
        "cpu_ms_per_clip": round(1000 * cpu / clips, 1),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


class TrainTimings(NamedTuple):
    """Training steps/s with the real loader and from one batch held on the device, and that batch's shape."""

    loader_rate: float
    memory_rate: float
    batch_shape: list[int]


def train_timings(train_on: Callable[[DeviceBatch], None], batches: Iterator[DeviceBatch], steps: int = 20,
                  warmup: int = 3, profile_dir: str | None = None,
                  device: torch.device | None = None) -> TrainTimings:
    """Training steps/s of ``train_on`` (one step on a device batch) fed by ``batches`` (the real loader),
    beside the same steps on one batch held on the device.
    ``steps`` timed steps each, after ``warmup`` untimed ones. ``profile_dir``: afterwards, 3 more loader
    steps under ``torch.profiler`` (1 warm-up, 2 recorded), trace written there for TensorBoard."""
    device = device or resolve_device("auto")
    loader_seconds = time_steps(lambda _: train_on(next(batches)), steps, warmup, device)
    held = next(batches)
    memory_seconds = time_steps(lambda _: train_on(held), steps, warmup, device)
    if profile_dir is not None:
        _profile(lambda: train_on(next(batches)), profile_dir, device.type == "cuda")
    return TrainTimings(steps / loader_seconds, steps / memory_seconds, list(held.clips.shape))


def cycle_batches(prefetcher: DevicePrefetcher, loader) -> Iterator[DeviceBatch]:
    """Device batches forever: a new epoch of ``loader`` whenever one ends."""
    epoch = 0
    while True:
        set_loader_epoch(loader, epoch)
        yield from prefetcher
        epoch += 1


def _profile(step: Callable[[], None], directory: str, on_cuda: bool) -> None:
    """Three calls of ``step`` under ``torch.profiler``: 1 warm-up, 2 recorded, trace in ``directory``."""
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=2),
                 on_trace_ready=tensorboard_trace_handler(directory), record_shapes=True) as prof:
        for _ in range(3):
            step()
            prof.step()


def format_table(result: dict[str, Any]) -> str:
    """``result`` as two aligned columns, key and value, one per line."""
    width = max(len(key) for key in result)
    lines = []
    for key, value in result.items():
        if isinstance(value, float) and math.isfinite(value):
            value = f"{value:,.3f}"
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)
