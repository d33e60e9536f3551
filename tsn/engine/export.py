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

from tsn.engine.inference import TrainedModel
from tsn.fileio import atomic_write_text
from tsn.models import TSN

FORMATS = ("onnx", "torchscript")
# Probabilities differ between runtimes by float32 rounding of differently fused and ordered kernels
# (about 1e-6 measured); 1e-4 leaves room for deeper networks while still catching a wrong
# normalisation, layout or consensus, which move probabilities by far more.
DEFAULT_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The export failed, or the exported file does not compute what the PyTorch model computes."""


class DeployedTSN(nn.Module):
    """uint8 frames ``(B, T, C, H, W)`` -> class probabilities ``(B, classes)`` (module docstring)."""

    def __init__(self, model: TSN) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(model.spec.mean, dtype=torch.float32).view(1, 1, -1, 1, 1)  # (1, 1, C, 1, 1)
        std = torch.tensor(model.spec.std, dtype=torch.float32).view(1, 1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add, as tsn.layout.normalize_clips
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(torch.float32) * self.scale - self.shift  # (B, T, C, H, W)
        return self.model(x).softmax(dim=-1)


@dataclass(frozen=True)
class InputSpec:
    """The exported network's input: ``(batch, frames, channels, size, size)`` uint8."""

    frames: int
    channels: int
    size: int

    def random(self, batch: int, seed: int = 0) -> torch.Tensor:
        """Random uint8 frames ``(batch, T, C, H, W)``."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (batch, self.frames, self.channels, self.size, self.size), dtype=torch.uint8,
                             generator=generator)


def input_spec(trained: TrainedModel) -> InputSpec:
    """What the trained TSN reads: frames per clip, channels per frame, side (``tsn.layout``)."""
    data = trained.config.data
    return InputSpec(data.num_segments * data.frames_read_per_segment, 2 if data.modality == "flow" else 3,
                     data.input_size)


# The description (input shape, class names, sampling) is kept inside the file under this key (ONNX
# metadata_props, TorchScript extra files), so a file never travels without it; <out>.json is a copy.
METADATA_KEY = "tsn"


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


def read_description(path: str | os.PathLike[str]) -> dict:
    """The description an exported file carries (``_description``: input shape, class names, sampling, crop)."""
    path = Path(path)
    if path.suffix == ".onnx":
        try:
            import onnx
        except ImportError:
            raise ExportError(f"{path}: reading an ONNX file needs onnx: pip install 'tsn[export]'") from None
        props = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
        text = props.get(METADATA_KEY)
    else:
        files = {f"{METADATA_KEY}.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        text = files[f"{METADATA_KEY}.json"]
    if not text:
        raise ExportError(f"{path}: carries no tsn description (not written by tools/export.py)")
    return json.loads(text)


def onnx_providers(device: torch.device) -> list[str]:
    """onnxruntime's execution providers for ``device``: CUDA first where asked for and present, else the CPU."""
    import onnxruntime

    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(path: Path, device: torch.device):
    """An onnxruntime session on ``path``, with as many CPU threads as PyTorch uses (``OMP_NUM_THREADS``,
    the process's CPU affinity), so that a run pinned to some cores stays on them as the PyTorch path does."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("running an ONNX file needs onnxruntime: pip install 'tsn[export]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=onnx_providers(device))


def load_runner(path: Path, format: str,
                device: torch.device = torch.device("cpu")) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the exported file at ``path``: uint8 frames (B, T, C, H, W) -> probabilities (B, classes);
    an ONNX file on onnxruntime's CUDA provider when ``device`` is CUDA and the provider is there, else the CPU."""
    if format == "onnx":
        session = onnx_session(path, device)
        run = lambda frames: session.run(None, {"frames": frames})[0]  # noqa: E731
        run.runtime = f"onnxruntime ({session.get_providers()[0]})"  # what runs it, the fallback included
        return run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")

    def run(frames: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(frames)).numpy()
    return run


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


class ExportedTSN:
    """A file of ``tools/export.py`` run as a model: uint8 clips ``(N, T, C, H, W)`` -> log-probabilities
    ``(N, classes)`` (so that a softmax, as ``tsn.engine.evaluate.view_scores`` takes of logits, gives the
    file's probabilities back), with the class names and run config it carries. It normalises its frames
    itself: give it uint8 clips, no mean and std. ``runtime`` names what runs it (onnxruntime and its
    provider, or TorchScript)."""

    def __init__(self, path: str | os.PathLike[str], device: torch.device = torch.device("cpu")) -> None:
        from tsn.config import Config, ConfigError

        self.path = Path(path)
        if self.path.suffix not in (".onnx", ".pt"):
            raise ExportError(f"{self.path}: an exported model is a .onnx or .pt file of tools/export.py")
        if not self.path.is_file():
            raise ExportError(f"{self.path}: no such file")
        description = read_description(self.path)
        if "config" not in description:
            raise ExportError(f"{self.path}: carries no run config (exported by an older tools/export.py): export "
                              "it again")
        try:
            self.config = Config.from_dict(description["config"])
        except ConfigError as error:
            raise ExportError(f"{self.path}: its run config is not valid here: {error}") from None
        self.class_names: list[str] = list(description["class_names"])
        shape = description["input"]["shape"]
        self.spec = InputSpec(int(shape[1]), int(shape[2]), int(shape[3]))
        self.format = "onnx" if self.path.suffix == ".onnx" else "torchscript"
        self.device = device
        self._run = load_runner(self.path, self.format, device)
        self.runtime = getattr(self._run, "runtime", "torchscript (CPU)")

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, T, C, H, W)`` -> float32 log-probabilities ``(N, classes)`` on the clips' device."""
        if clips.dtype != torch.uint8 or tuple(clips.shape[1:]) != (self.spec.frames, self.spec.channels,
                                                                    self.spec.size, self.spec.size):
            raise ValueError(f"{self.path} takes uint8 clips (N, {self.spec.frames}, {self.spec.channels}, "
                             f"{self.spec.size}, {self.spec.size}), got {clips.dtype} {tuple(clips.shape)}")
        probabilities = self._run(np.ascontiguousarray(clips.cpu().numpy()))
        # log(0) would be -inf where float32 underflowed; the floor changes no probability that float32 shows
        return torch.from_numpy(probabilities).clamp_min(1e-38).log().to(clips.device)


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


# The per-frame graph of a causal TSM (tsn.engine.stream): its inputs and outputs besides the caches.
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
    """Export the per-frame graph of a causal TSM (``tsn.engine.stream.StreamingShift``) to the ONNX file
    ``out``: uint8 frame ``(1, 3, S, S)``, the window's earlier features' maximum, and one cache per shifted
    convolution in; frame logits, pooled feature, window logits and the new caches out. Checked against the
    PyTorch recognizer on ``frames`` random frames in a row (``window`` frames a window) before it is put in
    place; writes ``out.json``."""
    from tsn.engine.stream import StreamingShift, torch_recognizer

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


class OnnxFrameStep:
    """The per-frame graph of ``export_stream`` on onnxruntime, keeping the caches between frames
    (``tsn.engine.stream.FrameStep``)."""

    def __init__(self, path: Path, description: dict, device: torch.device = torch.device("cpu")) -> None:
        stream = description["stream"]
        self.session = onnx_session(path, device)
        self.runtime = f"onnxruntime ({self.session.get_providers()[0]})"
        self.shapes = [tuple(shape) for shape in stream["cache_shapes"]]
        self.names = [f"cache_{i}" for i in range(len(self.shapes))]
        self.reset()

    def reset(self) -> None:
        self.caches = [np.zeros(shape, dtype=np.float32) for shape in self.shapes]

    def __call__(self, frame: np.ndarray, window_max: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feeds = {"frame": frame, "window_max": window_max[None], **dict(zip(self.names, self.caches))}
        logits, feature, window_logits, *self.caches = self.session.run(None, feeds)
        return logits[0], feature[0], window_logits[0]


def stream_recognizer_from_file(path: str | os.PathLike[str], window: int,
                                device: torch.device = torch.device("cpu")):
    """A ``tsn.engine.stream.StreamRecognizer`` running the per-frame graph at ``path`` (``export_stream``)."""
    from tsn.engine.stream import StreamRecognizer

    description = read_description(path)
    if description.get("format") != "onnx-stream":
        raise ExportError(f"{path}: not a per-frame graph (tools/export.py --stream)")
    stream = description["stream"]
    step = OnnxFrameStep(Path(path), description, device)
    return StreamRecognizer(step, stream["consensus"], window, stream["input_size"], stream["short_side"],
                            stream["feature_dim"])
