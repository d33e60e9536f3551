"""Export a trained TSN for deployment: ONNX (checked with onnxruntime) or TorchScript.

The exported network is the whole of inference, so that a deployment feeds raw decoded frames:
uint8 RGB frames ``(B, T, C, H, W)`` (``tsn.layout``: T = K * L frames of the TSN's own sampling,
K * (L + 1) for RGB difference; C = 3, or 2 for flow; H = W = ``data.input_size``) -> class
probabilities ``(B, classes)``: normalisation, the backbone on every frame, the head, the segment
consensus and the softmax. Only the batch axis is dynamic. The file carries its description (the
input shape, the class names and how the frames were sampled and cropped; ``read_description``), and
``<out>.json`` beside it is a readable copy.

The file is checked against PyTorch on random frames (batches of 1 and 3) and on real clips before it
is put in place; a largest difference above ``tolerance`` is an ``ExportError`` and leaves no file.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from tsn.evaluation.deployed import (
    METADATA_KEY,
    DeployedTSN,
    ExportError,
    InputSpec,
    OnnxFrameStep,
    input_spec,
    load_runner,
    read_description,
)
from tsn.apps.predict import single_video_dataset
from tsn.config import resolve_path
from tsn.data.lists import read_list
from tsn.evaluation.inference import TrainedModel
from tsn.fileio import atomic_write_text

FORMATS = ("onnx", "torchscript")
# Real videos an export is checked on when none are given: the first of the config's test list.
DEFAULT_CHECK_VIDEOS = 2
# Probabilities differ between runtimes by float32 rounding of differently fused and ordered kernels
# (about 1e-6 measured); 1e-4 leaves room for deeper networks while still catching a wrong
# normalisation, layout or consensus, which move probabilities by far more.
DEFAULT_TOLERANCE = 1e-4


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, description: str) -> None:
    """The deployed TSN: uint8 frames -> probabilities, with a dynamic batch axis."""
    _export_onnx_graph(module, (example,), path, ["frames"], ["probabilities"], description,
                       dynamic_shapes=({0: torch.export.Dim("batch")},))


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, description: str) -> None:
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream but still the way to a file that C++ and mobile runtimes load;
        # the tracer warns about the shape checks, which only see the fixed T, C, H, W
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": description})


def largest_difference(deployed: DeployedTSN, run: Callable[[np.ndarray], np.ndarray],
                       inputs: Sequence[torch.Tensor]) -> float:
    """The largest absolute difference of probabilities between ``deployed`` (PyTorch) and ``run`` over ``inputs``."""
    worst = 0.0
    for frames in inputs:
        with torch.no_grad():
            expected = deployed(frames).numpy()
        got = run(frames.numpy())
        if got.shape != expected.shape:
            raise ExportError(f"the exported file returned shape {got.shape} for input {tuple(frames.shape)}, "
                              f"PyTorch {expected.shape}")
        for name, values in (("the exported file", got), ("PyTorch", expected)):
            if not np.isfinite(values).all():  # max() would pass NaN over as 0
                raise ExportError(f"{name} returned non-finite probabilities for input {tuple(frames.shape)}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


@dataclass(frozen=True)
class ExportReport:
    """What ``export`` wrote and checked: the file, the largest difference to PyTorch on random and on real
    frames (None: no real clip given), and the input it takes."""

    path: Path
    random_difference: float
    real_difference: float | None
    spec: InputSpec


def export(trained: TrainedModel, format: str, out: str | os.PathLike[str], real_clips: Sequence[torch.Tensor] = (),
           tolerance: float = DEFAULT_TOLERANCE) -> ExportReport:
    """Export ``trained`` (on the CPU) to ``out`` in ``format`` and check it (module docstring); writes ``out.json``.

    ``real_clips``: uint8 clips ``(T, C, H, W)`` of real videos, as the test pipeline makes them."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    deployed = DeployedTSN(trained.model.cpu().eval()).eval()
    spec = input_spec(trained)
    tmp = target.parent / f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex}.partial{target.suffix}"
    try:
        description = json.dumps(_description(trained, spec, format))
        # an example batch of 2: a batch of 1 could be specialised as a constant by the exporter
        (_export_onnx if format == "onnx" else _export_torchscript)(deployed, spec.random(2), tmp, description)
        run = load_runner(tmp, format)
        random_difference = largest_difference(deployed, run, [spec.random(1, seed=1), spec.random(3, seed=2)])
        real = torch.stack(list(real_clips)) if real_clips else None  # (N, T, C, H, W)
        real_difference = largest_difference(deployed, run, [real]) if real is not None else None
        worst = max(random_difference, 0.0 if real_difference is None else real_difference)
        if not worst <= tolerance:
            raise ExportError(f"the {format} file differs from PyTorch by up to {worst:.3g} in probability "
                              f"(tolerance {tolerance:g}): not written")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(target.with_name(target.name + ".json"), json.dumps(_description(trained, spec, format), indent=2)
                      + "\n")
    return ExportReport(target, random_difference, real_difference, spec)


def check_clips(trained: TrainedModel, videos: Sequence[str | os.PathLike[str]] = ()) -> list[torch.Tensor]:
    """The real clips to check an export on, as the test pipeline makes them (uint8 ``(T, C, H, W)``, one view
    each): of ``videos``, else of the first ``DEFAULT_CHECK_VIDEOS`` of the config's ``data.test_list`` where
    that file exists (none where it does not)."""
    data = trained.config.data
    if not videos:
        test_list = resolve_path(data, data.test_list)
        records = read_list(test_list, "rawframes" if data.modality == "flow" else data.format) \
            if test_list.is_file() else []
        videos = [resolve_path(data, record.path) for record in records[:DEFAULT_CHECK_VIDEOS]]
    rng = np.random.default_rng(0)
    return [single_video_dataset(trained.config, video, 1, 1, trained.class_names).load(0, rng)[0]
            for video in videos]


def _description(trained: TrainedModel, spec: InputSpec, format: str) -> dict:
    data = trained.config.data
    return {
        "format": format,
        "input": {"name": "frames", "dtype": "uint8", "shape": ["batch", spec.frames, spec.channels, spec.size,
                                                                   spec.size],
                  "layout": "(batch, frames, channels, height, width), RGB (flow: x, y), 0..255"},
        "output": {"name": "probabilities", "shape": ["batch", len(trained.class_names)]},
        "class_names": trained.class_names,
        "sampling": {"modality": data.modality, "num_segments": data.num_segments,
                     "frames_per_segment": spec.frames // data.num_segments,
                     "how": "the middle frames of num_segments equal parts of the video (tsn.data.sampling.val_indices)"},
        "crop": {"short_side": data.short_side, "size": data.input_size,
                 "how": "resize the short side to short_side, then take the centre size x size square"},
        "config": trained.config.to_dict(),  # the run's config: tools/test.py and predict.py read videos by it
    }


# The per-frame graph of a causal TSM (tsn.apps.stream): its inputs and outputs besides the caches.
STREAM_INPUTS = ("frame", "window_max")
STREAM_OUTPUTS = ("logits", "feature", "window_logits")


@dataclass(frozen=True)
class StreamExportReport:
    """What ``export_stream`` wrote: the file, the largest difference of probabilities to the PyTorch recognizer
    over a sequence of frames, and the caches the graph carries from frame to frame."""

    path: Path
    difference: float
    cache_shapes: tuple[tuple[int, ...], ...]


def export_stream(trained: TrainedModel, out: str | os.PathLike[str], tolerance: float = DEFAULT_TOLERANCE,
                  window: int = 4, frames: int = 6) -> StreamExportReport:
    """Export the per-frame graph of a causal TSM (``tsn.apps.stream.StreamingShift``) to the ONNX file
    ``out``: uint8 frame ``(1, 3, S, S)``, the window's earlier features' maximum, and one cache per shifted
    convolution in; frame logits, pooled feature, window logits and the new caches out. Checked against the
    PyTorch recognizer on ``frames`` random frames in a row (``window`` frames a window) before it is put in
    place; writes ``out.json``."""
    from tsn.apps.stream import StreamingShift, torch_recognizer

    model = trained.model.cpu().eval()
    data = trained.config.data
    step = StreamingShift(model).eval()
    shapes = tuple(step.cache_shapes(data.input_size))
    names = [f"cache_{i}" for i in range(len(shapes))]
    example = (torch.zeros(1, 3, data.input_size, data.input_size, dtype=torch.uint8),
               torch.full((1, model.head.descriptor_dim), float("-inf")), *(torch.zeros(shape) for shape in shapes))
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex}.partial{target.suffix}"
    description = {"format": "onnx-stream", "class_names": trained.class_names, "config": trained.config.to_dict(),
                   "stream": {"cache_shapes": [list(shape) for shape in shapes], "consensus": model.consensus,
                              "feature_dim": model.head.descriptor_dim, "input_size": data.input_size,
                              "short_side": data.short_side, "segment_seconds": trained.segment_seconds,
                              "inputs": list(STREAM_INPUTS) + names, "outputs": list(STREAM_OUTPUTS) + names}}
    try:
        _export_onnx_graph(step, example, tmp, list(STREAM_INPUTS) + names,
                           list(STREAM_OUTPUTS) + [f"{name}_out" for name in names], json.dumps(description))
        generator = np.random.default_rng(0)
        sequence = [generator.integers(0, 256, (data.input_size + 8, data.input_size + 16, 3), dtype=np.uint8)
                    for _ in range(frames)]
        reference = torch_recognizer(model, window, data.input_size, data.short_side)
        exported = stream_recognizer_from_file(tmp, window)
        worst = 0.0
        for frame in sequence:
            expected, got = reference.push(frame), exported.push(frame)
            for a, b in ((expected.frame, got.frame), (expected.window, got.window)):
                if not np.isfinite(b).all():
                    raise ExportError("the per-frame graph returned non-finite probabilities")
                worst = max(worst, float(np.abs(a - b).max()))
        if not worst <= tolerance:
            raise ExportError(f"the per-frame graph differs from PyTorch by up to {worst:.3g} in probability "
                              f"(tolerance {tolerance:g}): not written")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(target.with_name(target.name + ".json"), json.dumps(description, indent=2) + "\n")
    return StreamExportReport(target, worst, shapes)


def _export_onnx_graph(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
                       outputs: list[str], description: str, dynamic_shapes: tuple | None = None) -> None:
    """``module`` on ``example`` to the ONNX file ``path``, carrying ``description``; shapes fixed but for
    ``dynamic_shapes`` (``torch.onnx.export``'s)."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it; say so before a long trace)
    except ImportError:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'tsn[export]'") from None
    program = torch.onnx.export(module, example, None, input_names=inputs, output_names=outputs, dynamo=True,
                                dynamic_shapes=dynamic_shapes, verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: description})
    onnx.save(proto, str(path))


def stream_recognizer_from_file(path: str | os.PathLike[str], window: int,
                                device: torch.device = torch.device("cpu")):
    """A ``tsn.apps.stream.StreamRecognizer`` running the per-frame graph at ``path`` (``export_stream``)."""
    from tsn.apps.stream import StreamRecognizer

    description = read_description(path)
    if description.get("format") != "onnx-stream":
        raise ExportError(f"{path}: not a per-frame graph (tools/export.py --stream)")
    stream = description["stream"]
    step = OnnxFrameStep(Path(path), description, device)
    return StreamRecognizer(step, stream["consensus"], window, stream["input_size"], stream["short_side"],
                            stream["feature_dim"])
