"""Run a file of ``tools/export.py``: ONNX on onnxruntime (CUDA provider where asked for and present), TorchScript.

``ExportedTSN`` runs the clip model as ``tools/test.py`` and ``tools/predict.py`` do; ``read_description`` gives
what the file carries (input shape, class names, sampling, crop, run config); ``DeployedTSN`` is the PyTorch
module that an export writes (uint8 frames -> probabilities).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from tsn.errors import UserError
from tsn.evaluation.inference import TrainedModel
from tsn.models import TSN


class ExportError(UserError, RuntimeError):
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



class ExportedTSN:
    """A file of ``tools/export.py`` run as a model: uint8 clips ``(N, T, C, H, W)`` -> log-probabilities
    ``(N, classes)`` (so that a softmax, as ``tsn.evaluation.evaluate.view_scores`` takes of logits, gives the
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



class OnnxFrameStep:
    """The per-frame graph of ``export_stream`` on onnxruntime, keeping the caches between frames
    (``tsn.apps.stream.FrameStep``)."""

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
