"""The measurements' config readers: a config (or a checkpoint's) -> the loader, model and steps that
``tsn.measure.benchmark`` times, and the flat ``dict`` ``tools/benchmark.py`` prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from tsn.apps.stream import load_stream_model, stream_accuracy
from tsn.build import build_class_names, build_dataset, build_loader, build_optimizer, build_tsn
from tsn.config import Config, load_config
from tsn.data.lists import read_video_list
from tsn.data.prefetch import DeviceBatch, DevicePrefetcher
from tsn.evaluation.deployed import DeployedTSN, InputSpec, input_spec, load_runner, read_description
from tsn.evaluation.inference import load_trained
from tsn.measure.benchmark import (check_amp, cycle_batches, deployed_timings, device_name, forward_timings,
                                   loader_timings, prepare_model, train_timings)
from tsn.runtime.device import resolve_device
from tsn.training.build import build_loss_recipe
from tsn.training.trainer import compute_loss, optimizer_step


def benchmark_config(path: Path, overrides: Sequence[str], workers: int | None, batch_size: int | None) -> Config:
    """The config of ``path`` with ``overrides``, and ``--workers`` and ``--batch-size`` where given."""
    overrides = list(overrides)
    if workers is not None:
        overrides.append(f"data.num_workers={workers}")
    if batch_size is not None:
        overrides.append(f"data.batch_size={batch_size}")
    return load_config(path, overrides)


def loader_benchmark(cfg: Config, split: str = "train", clips: int = 0, passes: int = 3) -> dict[str, Any]:
    """Clips/s of the ``split`` loader that ``cfg`` describes (workers and batch size from ``cfg.data``).

    ``clips``: clips to read per pass (0: the whole list; with ``drop_last`` in training, whole
    batches only). ``passes`` >= 1 reads of those clips; see ``tsn.measure.benchmark``.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    num_classes = len(build_class_names(cfg))
    dataset = build_dataset(cfg, split, num_classes)  # type: ignore[arg-type]
    loader = build_loader(cfg, dataset, train=split == "train", distributed=False)
    wanted = len(dataset) if clips <= 0 else min(clips, len(dataset))
    return {"mode": "loader", "format": cfg.data.format, "backend": cfg.data.backend, "split": split,
            "workers": cfg.data.num_workers, "batch_size": cfg.data.batch_size, "segments": cfg.data.num_segments,
            **loader_timings(loader, wanted, passes)}


def train_benchmark(cfg: Config, steps: int = 20, warmup: int = 3, profile_dir: str | None = None,
                    device: torch.device | None = None) -> dict[str, Any]:
    """Training steps/s of the ``cfg`` run with its real train loader, beside the same model fed from
    one batch held on the device (``tsn.measure.benchmark.train_timings``).

    The model side follows ``cfg.train`` as the trainer does (amp, channels_last on CUDA, compile,
    the loss recipe, SGD/AdamW); the loader is cycled when it has fewer batches than the steps.
    """
    device = device or resolve_device("auto")
    tcfg = cfg.train
    num_classes = len(build_class_names(cfg))
    dataset = build_dataset(cfg, "train", num_classes)
    loader = build_loader(cfg, dataset, train=True, distributed=False)
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} training videos make no full batch of {cfg.data.batch_size}")
    model = build_tsn(cfg, num_classes)
    mean, std = tuple(model.spec.mean), tuple(model.spec.std)
    net = prepare_model(model, device, tcfg.channels_last, tcfg.compile)
    optimizer = build_optimizer(tcfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.amp == "fp16" and device.type == "cuda")
    mix_rng = np.random.default_rng(tcfg.seed)
    recipe = build_loss_recipe(tcfg)
    net.train()
    batches = cycle_batches(DevicePrefetcher(loader, device, mean, std, tcfg.channels_last), loader)

    def train_on(batch: DeviceBatch) -> None:
        _, loss = compute_loss(net, model, batch.clips, batch.labels, recipe, mix_rng, device)
        optimizer_step(loss, model, optimizer, scaler, tcfg.clip_grad_norm)

    loader_rate, memory_rate, batch_shape = train_timings(train_on, batches, steps, warmup, profile_dir, device)
    return {
        "mode": "train", "backbone": cfg.model.backbone, "device": device_name(device),
        "format": cfg.data.format, "workers": cfg.data.num_workers, "batch": cfg.data.batch_size,
        "segments": cfg.data.num_segments, "amp": tcfg.amp if device.type == "cuda" else "none",
        "channels_last": tcfg.channels_last, "compile": tcfg.compile, "steps": steps,
        "loader_steps_per_s": round(loader_rate, 3), "memory_steps_per_s": round(memory_rate, 3),
        "ratio": round(loader_rate / memory_rate, 3), "loader_clips_per_s": round(loader_rate * cfg.data.batch_size, 2),
        "batch_shape": batch_shape, "profile_dir": profile_dir,
    }


def inference_benchmark(checkpoint: str | Path, batch: int = 8, segments: int | None = None, amp: str = "none",
                        channels_last: bool = False, steps: int = 10, warmup: int = 3,
                        device: torch.device | None = None) -> dict[str, Any]:
    """Forward-only throughput of a trained TSN (``tsn.evaluation.inference.load_trained``, eval mode, no
    gradients) on random clips of its own input size and stream, ``segments`` segments each (default:
    the run's ``data.num_segments``). ``images_per_s`` counts backbone inputs (frames, or segment
    stacks for flow and RGB difference). ``amp`` acts on CUDA only."""
    check_amp(amp)
    device = device or resolve_device("auto")
    trained = load_trained(checkpoint, device=device)
    data = trained.config.data
    segments = segments or data.num_segments
    size = data.input_size
    # the loader's frames per segment and channels per frame for this stream (tsn.layout)
    frames = data.frames_read_per_segment
    channels = 2 if data.modality == "flow" else 3
    trained.model.num_segments = segments
    generator = torch.Generator().manual_seed(0)
    clips = torch.randn((batch, segments * frames, channels, size, size), generator=generator)  # (B, T, C, H, W)
    seconds = forward_timings(trained.model, clips, amp, channels_last, steps, warmup, device)
    return {
        "mode": "infer", "checkpoint": str(checkpoint), "backbone": trained.config.model.backbone,
        "device": device_name(device), "batch": batch, "segments": segments, "input_size": size,
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
    run: Callable[[np.ndarray], np.ndarray]
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
    return {"mode": "deployed", "model": str(path), "runtime": runtime,
            **deployed_timings(run, spec, batch, steps, warmup)}


def stream_benchmark(checkpoint: Path | None, exported: Path | None, window: int | None, list_file: Path,
                     root: Path, strides: Sequence[int]) -> list[dict[str, object]]:
    """Top-1 of a causal model (a ``checkpoint``, or the ``exported`` per-frame graph of ``tools/export.py
    --stream``; ``window`` frames, None: its segments) streamed over the videos of ``list_file`` (paths under
    ``root``), one row per stride (``tsn.apps.stream.stream_accuracy``)."""
    loaded = load_stream_model(exported or checkpoint, exported is not None, window)
    videos = [(str(root / record.path), record.label) for record in read_video_list(list_file)]
    return stream_accuracy(loaded, videos, strides)
