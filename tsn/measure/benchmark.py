"""Throughput measurements: the data loader, one model's train step, and end-to-end training.

Each function returns a flat ``dict`` of plain numbers and strings (``tools/benchmark.py`` prints it
as one JSON line, or as a table with ``format_table``):

- ``loader_benchmark``: clips/s through the real ``ClipDataset`` and ``DataLoader`` that training
  uses (``build_dataset`` / ``build_loader``). The same clips (the first ``clips`` of epoch 0's
  order, with the same random frames and crops) are read ``passes`` times by the same loader
  (persistent workers). The first pass is the warm-up: it starts the workers and probes every
  video (frame count, size), which a ``ClipDataset`` does once per process and then caches;
  ``clips_per_s`` is the median of the later passes (every epoch after the first: the median
  because other processes on a shared machine make single passes noisy), ``clips_per_s_first``
  the first pass.
- ``model_benchmark``: train steps (forward, loss, backward, SGD step) of a TSN on random input
  held on the device: images/s and clips/s, after ``warmup`` untimed steps.
- ``train_benchmark``: training steps/s with the real loader, and with one batch held on the
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
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from tsn.config import Config, TrainConfig
from tsn.data.loader import set_loader_epoch
from tsn.build import build_class_names, build_dataset, build_loader, build_optimizer, build_tsn
from tsn.evaluation.evaluate import autocast_context
from tsn.evaluation.deployed import DeployedTSN, InputSpec, input_spec, load_runner, read_description
from tsn.evaluation.inference import load_trained
from tsn.data.prefetch import DeviceBatch, DevicePrefetcher, channels_last_clips
from tsn.training.trainer import compute_loss, optimizer_step
from tsn.models import build_model

AMP_CHOICES = ("none", "bf16", "fp16")


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_benchmark(cfg: Config, split: str = "train", clips: int = 0, passes: int = 3) -> dict[str, Any]:
    """Clips/s of the ``split`` loader that ``cfg`` describes (workers and batch size from ``cfg.data``).

    ``clips``: clips to read per pass (0: the whole list; with ``drop_last`` in training, whole
    batches only). ``passes`` >= 1 reads of those clips; see the module docstring.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    num_classes = len(build_class_names(cfg))
    dataset = build_dataset(cfg, split, num_classes)  # type: ignore[arg-type]
    loader = build_loader(cfg, dataset, train=split == "train", distributed=False)
    wanted = len(dataset) if clips <= 0 else min(clips, len(dataset))
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
        "mode": "loader", "format": cfg.data.format, "backend": cfg.data.backend, "split": split,
        "workers": cfg.data.num_workers, "batch_size": cfg.data.batch_size, "segments": cfg.data.num_segments,
        "cpus": os.cpu_count(), "clips": results[-1][0],
        "clips_per_s": round(float(np.median(later)), 3), "clips_per_s_first": round(rates[0], 3),
        "pass_clips_per_s": [round(rate, 3) for rate in rates],
        "cpu_ms_per_clip": round(float(np.median(cpu_later)), 1) if cfg.data.num_workers == 0 else None,
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


def _prepare(model: nn.Module, device: torch.device, channels_last: bool, compile_model: bool) -> nn.Module:
    """``model`` on ``device`` (channels-last weights when asked), compiled when asked;
    returns the module to call (the compiled one or ``model``)."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def _time_steps(step: Callable[[int], None], steps: int, warmup: int, device: torch.device) -> float:
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
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    device = device or default_device()
    on_cuda = device.type == "cuda"
    model = build_model(backbone=backbone, pretrained=False, num_classes=num_classes, num_segments=segments,
                        temporal=temporal)
    net = _prepare(model, device, channels_last, compile_model)
    recipe = TrainConfig(amp=amp, label_smoothing=0.0)
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

    seconds = _time_steps(step, steps, warmup, device)
    return {
        "mode": "model", "backbone": backbone, "temporal": temporal, "device": _device_name(device), "batch": batch,
        "segments": segments, "input_size": input_size, "amp": amp if on_cuda else "none",
        "channels_last": channels_last, "compile": compile_model, "steps": steps,
        "seconds": round(seconds, 3), "images_per_s": round(steps * batch * segments / seconds, 2),
        "clips_per_s": round(steps * batch / seconds, 2),
    }


def inference_benchmark(checkpoint: str | Path, batch: int = 8, segments: int | None = None, amp: str = "none",
                        channels_last: bool = False, steps: int = 10, warmup: int = 3,
                        device: torch.device | None = None) -> dict[str, Any]:
    """Forward-only throughput of a trained TSN (``tsn.evaluation.inference.load_trained``, eval mode, no
    gradients) on random clips of its own input size and stream, ``segments`` segments each (default:
    the run's ``data.num_segments``). ``images_per_s`` counts backbone inputs (frames, or segment
    stacks for flow and RGB difference). ``amp`` acts on CUDA only."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    device = device or default_device()
    trained = load_trained(checkpoint, device=device)
    data = trained.config.data
    segments = segments or data.num_segments
    size = data.input_size
    # the loader's frames per segment and channels per frame for this stream (tsn.layout)
    frames = data.frames_read_per_segment
    channels = 2 if data.modality == "flow" else 3
    trained.model.num_segments = segments
    net = _prepare(trained.model, device, channels_last, compile_model=False)
    generator = torch.Generator().manual_seed(0)
    # (B, T, C, H, W)
    clips = torch.randn((batch, segments * frames, channels, size, size), generator=generator).to(device)
    if channels_last:
        clips = channels_last_clips(clips)

    def step(_: int) -> None:
        with torch.inference_mode(), autocast_context(device, amp):
            net(clips)

    seconds = _time_steps(step, steps, warmup, device)
    return {
        "mode": "infer", "checkpoint": str(checkpoint), "backbone": trained.config.model.backbone,
        "device": _device_name(device), "batch": batch, "segments": segments, "input_size": size,
        "amp": amp if device.type == "cuda" else "none", "channels_last": channels_last, "steps": steps,
        "seconds": round(seconds, 3), "images_per_s": round(steps * batch * segments / seconds, 2),
        "clips_per_s": round(steps * batch / seconds, 2),
    }


def deployed_benchmark(path: str | Path, batch: int = 1, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """CPU clips/s and CPU ms per clip of the whole deployed TSN (uint8 frames -> probabilities,
    ``tsn.apps.export``) on random frames of its own input shape, ``batch`` clips a call: an exported
    ``.onnx`` file (onnxruntime), a TorchScript file (the input shape from the description it carries), or a checkpoint
    (``.pth``: PyTorch eager, the same ``DeployedTSN`` the export traces, channels-last where the run's
    ``train.channels_last`` says so, as ``tools/predict.py`` runs it). CPU time is this process's,
    all threads together."""
    path = Path(path)
    if path.suffix == ".pth":
        trained = load_trained(path)
        deployed = DeployedTSN(trained.model).eval()
        if trained.config.train.channels_last:  # as tools/test.py and tools/predict.py run it
            deployed.model.to(memory_format=torch.channels_last)
        spec = input_spec(trained)

        def run(frames: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return deployed(torch.from_numpy(frames)).numpy()
        runtime = "pytorch eager"
    else:
        shape = read_description(path)["input"]["shape"]
        format = "onnx" if path.suffix == ".onnx" else "torchscript"
        run = load_runner(path, format)
        spec = InputSpec(shape[1], shape[2], shape[3])
        runtime = "onnxruntime" if format == "onnx" else "torchscript"
    frames = spec.random(batch).numpy()  # (B, T, C, H, W) uint8
    for _ in range(warmup):
        run(frames)
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(steps):
        run(frames)
    seconds, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started
    clips = steps * batch
    return {
        "mode": "deployed", "model": str(path), "runtime": runtime, "device": _device_name(torch.device("cpu")),
        "batch": batch, "input": [batch, spec.frames, spec.channels, spec.size, spec.size], "steps": steps,
        "seconds": round(seconds, 3), "clips_per_s": round(clips / seconds, 2),
        "cpu_ms_per_clip": round(1000 * cpu / clips, 1),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def train_benchmark(cfg: Config, steps: int = 20, warmup: int = 3, profile_dir: str | None = None,
                    device: torch.device | None = None) -> dict[str, Any]:
    """Training steps/s of the ``cfg`` run with its real train loader, beside the same model fed from
    one batch held on the device; ``ratio`` = loader rate / in-memory rate.

    The model side follows ``cfg.train`` as the trainer does (amp, channels_last on CUDA, compile,
    the loss recipe, SGD/AdamW). ``steps`` timed steps each, after ``warmup`` untimed ones; the
    loader is cycled when it has fewer batches. ``profile_dir``: afterwards, 3 more loader steps
    under ``torch.profiler`` (1 warm-up, 2 recorded), trace written there for TensorBoard.
    """
    device = device or default_device()
    on_cuda = device.type == "cuda"
    tcfg = cfg.train
    num_classes = len(build_class_names(cfg))
    dataset = build_dataset(cfg, "train", num_classes)
    loader = build_loader(cfg, dataset, train=True, distributed=False)
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} training videos make no full batch of {cfg.data.batch_size}")
    model = build_tsn(cfg, num_classes)
    mean, std = tuple(model.spec.mean), tuple(model.spec.std)
    channels_last = tcfg.channels_last
    net = _prepare(model, device, channels_last, tcfg.compile)
    optimizer = build_optimizer(tcfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.amp == "fp16" and on_cuda)
    mix_rng = np.random.default_rng(tcfg.seed)
    net.train()
    batches = _cycle(DevicePrefetcher(loader, device, mean, std, channels_last), loader)

    def train_on(batch: DeviceBatch) -> None:
        _, loss = compute_loss(net, model, batch.clips, batch.labels, tcfg, mix_rng, device)
        optimizer_step(loss, model, optimizer, scaler, tcfg.clip_grad_norm)

    loader_seconds = _time_steps(lambda _: train_on(next(batches)), steps, warmup, device)
    held = next(batches)
    memory_seconds = _time_steps(lambda _: train_on(held), steps, warmup, device)
    if profile_dir is not None:
        _profile(lambda: train_on(next(batches)), profile_dir, on_cuda)
    loader_rate, memory_rate = steps / loader_seconds, steps / memory_seconds
    clips_shape = list(held.clips.shape)
    return {
        "mode": "train", "backbone": cfg.model.backbone, "device": _device_name(device),
        "format": cfg.data.format, "workers": cfg.data.num_workers, "batch": cfg.data.batch_size,
        "segments": cfg.data.num_segments, "amp": tcfg.amp if on_cuda else "none", "channels_last": channels_last,
        "compile": tcfg.compile, "steps": steps, "loader_steps_per_s": round(loader_rate, 3),
        "memory_steps_per_s": round(memory_rate, 3), "ratio": round(loader_rate / memory_rate, 3),
        "loader_clips_per_s": round(loader_rate * cfg.data.batch_size, 2), "batch_shape": clips_shape,
        "profile_dir": profile_dir,
    }


def _cycle(prefetcher: DevicePrefetcher, loader) -> Iterator[DeviceBatch]:
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
