"""Recognition on a live stream, one frame at a time: ``StreamRecognizer``.

A model trained with ``model.temporal: tsm`` and ``model.shift_direction: causal`` only ever shifts channels
from the previous segment, so it can run on frames as they arrive: every shifted convolution
(``tsn.models.temporal.ShiftedConv2d``) keeps the channels it received with the last frame and gives them
to the next one. Pushed frames one by one, the recognizer gives for each frame the scores the offline
causal model gives that frame when it is run on the whole sequence as one clip (consensus ``identity``:
each segment's own scores), up to float rounding; a TSN without shift gives each frame's own scores.

Besides each frame's scores it gives the window's: the model's consensus over its last ``window`` frames
(``feature_max``: the classifier on the element-wise maximum of their pooled features; ``avg``/``max``: the
mean/maximum of their frame scores). With TSM this is not exactly the clip model over those ``window``
segments: the stream's frames carry channels from before the window, where a clip starts from zeros. Frames
must reach it at the spacing its segments had in training (``segment_stride``): TSN samples segments
spread over a whole video, so a stream is subsampled to about one frame per segment's length.

The same steps run on the PyTorch model (``TorchFrameStep``) or on an exported per-frame graph
(``tsn.apps.export``, onnxruntime): a step takes the uint8 frame and the caches, and gives the frame's
logits, its pooled feature, the window's logits (``feature_max``) and the new caches. ``print_stream`` is
``tools/predict.py --stream``: a source scored live and printed line by line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from tsn.config import ConfigError
from tsn.data.transforms import ResizedCenterCrop, to_tensor_clip
from tsn.io.live import LiveFrame, LiveSource, LiveSourceError, open_live
from tsn.models import TSN
from tsn.models.temporal import ShiftedConv2d, shifted_convs


class FrameStep(Protocol):
    """One frame through a network: uint8 ``(1, 3, S, S)`` -> frame logits ``(classes,)``, pooled feature ``(F,)``,
    the window's logits ``(classes,)`` given the maximum of the window's earlier features ``(F,)``."""

    def __call__(self, frame: np.ndarray, window_max: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def reset(self) -> None: ...


class StreamingShift(nn.Module):
    """The per-frame form of the causal shifted convolutions of a TSN: uint8 frame, caches -> logits, feature,
    window logits, new caches. The caches are the inputs and outputs of the graph, so that an exported
    copy (ONNX) keeps no state of its own."""

    def __init__(self, model: TSN) -> None:
        super().__init__()
        if model.temporal_shift == "bidirectional":
            raise ConfigError("model.shift_direction", "bidirectional needs the next frame: stream a model trained "
                                                       "with model.shift_direction: causal")
        if model.modality != "rgb":
            raise ConfigError("data.modality", f"{model.modality}: streaming reads RGB frames")
        self.model = model
        mean = torch.tensor(model.spec.mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
        std = torch.tensor(model.spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))  # (x / 255 - mean) / std as one multiply-add
        self.register_buffer("shift", mean / std)
        self.convs: list[ShiftedConv2d] = shifted_convs(model.backbone)

    def cache_shapes(self, size: int) -> list[tuple[int, ...]]:
        """The shape of every cache for frames of ``size`` x ``size``: each shifted convolution's input
        channels that come from the previous frame, ``(1, C // shift_div, h, w)``."""
        shapes: list[tuple[int, ...]] = []
        hooks = [conv.register_forward_pre_hook(
            lambda module, args: shapes.append((1, args[0].shape[1] // module.shift_div, *args[0].shape[2:])))
            for conv in self.convs]
        segments = [conv.segments for conv in self.convs]
        for conv in self.convs:
            conv.segments = 1  # one frame, seen as a clip of one segment
        try:
            with torch.no_grad():
                self.model.backbone(torch.zeros(1, 3, size, size, device=self.scale.device))
        finally:
            for hook, conv, count in zip(hooks, self.convs, segments):
                hook.remove()
                conv.segments = count
        return shapes

    def forward(self, frame: torch.Tensor, window_max: torch.Tensor,
                *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """uint8 ``(1, 3, S, S)``, the window's earlier features' maximum ``(1, F)`` (-inf: none), one cache per
        shifted convolution -> frame logits ``(1, classes)``, feature ``(1, F)``, window logits ``(1, classes)``,
        the new caches."""
        x = frame.to(torch.float32) * self.scale - self.shift  # (1, 3, S, S)
        for conv, cache in zip(self.convs, caches):
            conv.stream_cache = cache  # what the previous frame left: the channels shifted into this one
        try:
            maps = self.model.backbone(x)  # (1, D, h, w)
            new_caches = [conv.stream_cache for conv in self.convs]
        finally:
            for conv in self.convs:
                conv.stream_cache = None
        feature = self.model.head.pool(maps)  # (1, F)
        logits = self.model.head.classify(feature)  # (1, classes)
        window_logits = self.model.head.classify(torch.maximum(window_max, feature))  # (1, classes)
        return (logits, feature, window_logits, *new_caches)


class TorchFrameStep:
    """``StreamingShift`` of a PyTorch TSN, run eagerly; it keeps the caches between frames."""

    def __init__(self, model: TSN, size: int, device: torch.device) -> None:
        self.step = StreamingShift(model).to(device).eval()
        self.device = device
        self.shapes = self.step.cache_shapes(size)
        self.reset()

    def reset(self) -> None:
        self.caches = [torch.zeros(shape, device=self.device) for shape in self.shapes]

    @torch.no_grad()
    def __call__(self, frame: np.ndarray, window_max: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, feature, window_logits, *self.caches = self.step(
            torch.from_numpy(frame).to(self.device), torch.from_numpy(window_max).to(self.device)[None], *self.caches)
        return logits[0].cpu().numpy(), feature[0].cpu().numpy(), window_logits[0].cpu().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax of ``(..., classes)`` logits in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class FrameScores:
    """What the recognizer says after a frame: its index among the frames pushed, its own class probabilities,
    the window's (the consensus of the last ``window`` frames, this one included), and how long the step took."""

    index: int
    frame: np.ndarray
    window: np.ndarray
    seconds: float


class StreamRecognizer:
    """Frames in, one at a time (RGB uint8 ``(H, W, 3)`` of any size): ``FrameScores`` out (module docstring).

    ``step``: the network (``TorchFrameStep`` or an exported graph's runner); ``consensus``: the model's;
    ``window``: frames in the window consensus; ``input_size`` and ``short_side``: the centre crop that the
    model's test views take. ``reset()`` starts a new stream."""

    def __init__(self, step: FrameStep, consensus: str, window: int, input_size: int, short_side: int,
                 feature_dim: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        self.step = step
        self.consensus = consensus
        self.window = window
        self.crop = ResizedCenterCrop(input_size, short_side)
        self.feature_dim = feature_dim
        self.reset()

    def reset(self) -> None:
        self.step.reset()
        self.count = 0
        self.features: deque[np.ndarray] = deque(maxlen=self.window)
        self.logits: deque[np.ndarray] = deque(maxlen=self.window)

    def push(self, frame: np.ndarray) -> FrameScores:
        """Score the next frame of the stream."""
        started = time.perf_counter()
        crop = to_tensor_clip(self.crop(frame[None], None)).numpy()  # (1, 3, S, S) uint8
        earlier = list(self.features)[-(self.window - 1):] if self.window > 1 else []
        window_max = np.max(earlier, axis=0) if earlier else np.full(self.feature_dim, -np.inf, np.float32)
        logits, feature, window_logits = self.step(crop, window_max.astype(np.float32))
        self.features.append(feature)
        self.logits.append(logits)
        if self.consensus == "feature_max":
            window = window_logits
        elif self.consensus == "max":
            window = np.max(self.logits, axis=0)
        else:  # avg (and identity: the mean of the frames' scores)
            window = np.mean(self.logits, axis=0)
        scores = FrameScores(self.count, softmax(logits), softmax(window), time.perf_counter() - started)
        self.count += 1
        return scores


def torch_recognizer(model: TSN, window: int, input_size: int, short_side: int,
                     device: torch.device = torch.device("cpu")) -> StreamRecognizer:
    """A ``StreamRecognizer`` running ``model`` (causal TSM, or a TSN without shift) in PyTorch."""
    step = TorchFrameStep(model.eval(), input_size, device)
    return StreamRecognizer(step, model.consensus, window, input_size, short_side, model.head.descriptor_dim)


def segment_stride(fps: float, segment_seconds: float | None, default_seconds: float = 0.25) -> int:
    """Frames of a stream at ``fps`` between two frames given to the recognizer: one per ``segment_seconds``
    (the median spacing of the segments in training, which the checkpoint records), at least 1."""
    seconds = segment_seconds if segment_seconds and segment_seconds > 0 else default_seconds
    return max(1, round(fps * seconds)) if fps > 0 else 1


def offline_frame_logits(model: TSN, clip: torch.Tensor) -> torch.Tensor:
    """Each segment's own logits from the offline model on one clip ``(1, T, 3, H, W)`` (normalised): ``(T, classes)``
    (the head on every segment's pooled feature: the consensus ``identity`` of the TSN, for every consensus)."""
    saved = model.num_segments
    model.num_segments = clip.shape[1]
    try:
        maps = model.forward_features(clip)[0]  # (T, D, h, w)
    finally:
        model.num_segments = saved
    return model.head.classify(model.head.pool(maps))


@dataclass(frozen=True)
class StreamUpdate:
    """A scored frame of a source: its number in the source, its time (s), the recognizer's scores, and the
    latency from the frame's arrival to its scores (s)."""

    source_frame: int
    time: float
    scores: FrameScores
    latency: float


@dataclass(frozen=True)
class StreamSummary:
    """A run over a source: frames read, scored, and dropped (a frame due for scoring that a newer one replaced
    while the model was busy), the latencies, the wall time, and why it stopped."""

    frames_read: int
    frames_scored: int
    frames_dropped: int
    latencies: tuple[float, ...]
    seconds: float
    stopped: str

    def as_dict(self) -> dict[str, object]:
        lat = np.array(self.latencies) * 1000 if self.latencies else np.zeros(1)
        return {"frames_read": self.frames_read, "frames_scored": self.frames_scored,
                "frames_dropped": self.frames_dropped, "seconds": round(self.seconds, 3),
                "scored_per_s": round(self.frames_scored / self.seconds, 2) if self.seconds > 0 else 0.0,
                "latency_ms_median": round(float(np.median(lat)), 1),
                "latency_ms_p95": round(float(np.percentile(lat, 95)), 1), "stopped": self.stopped}


class _LatestFrame:
    """The one frame waiting to be scored, filled by a reader thread: a newer frame replaces an unscored one
    (counted as dropped), so that the recognizer always works on the present."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.item: tuple[int, LiveFrame, float] | None = None
        self.done = False
        self.error: Exception | None = None
        self.read = 0
        self.dropped = 0

    def put(self, item: tuple[int, LiveFrame, float]) -> None:
        with self.condition:
            self.dropped += self.item is not None
            self.item = item
            self.condition.notify()

    def finish(self, error: Exception | None) -> None:
        with self.condition:
            self.done, self.error = True, error
            self.condition.notify()

    def take(self) -> tuple[int, LiveFrame, float] | None:
        """The waiting frame, or None once the source has ended and nothing waits."""
        with self.condition:
            while self.item is None and not self.done:
                self.condition.wait()
            item, self.item = self.item, None
            return item


def _read_live(source: LiveSource, stride: int, realtime: bool, slot: _LatestFrame, stop: threading.Event) -> None:
    """Reader thread: every ``stride``-th frame into ``slot``, a file paced at its own timestamps with ``realtime``."""
    error: Exception | None = None
    started = time.monotonic()
    try:
        for number, frame in enumerate(source.frames()):
            if stop.is_set():
                break
            slot.read = number + 1
            if realtime and source.is_file:
                delay = started + frame.time - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if number % stride == 0:
                arrival = started + frame.time if realtime and source.is_file else time.monotonic()
                slot.put((number, frame, arrival))
    except Exception as caught:  # noqa: BLE001  (handed to the main thread, which reports it once)
        error = caught
    slot.finish(error)


def run_stream(recognizer: StreamRecognizer, source: LiveSource, stride: int, realtime: bool,
               on_update: Callable[[StreamUpdate], None]) -> StreamSummary:
    """Score every ``stride``-th frame of ``source`` and call ``on_update`` after each.

    A file without ``realtime`` is read as fast as the model goes (nothing dropped); a file with
    ``realtime``, a camera or a network stream is read by a thread at its own pace, and a frame that
    a newer one replaces before the model is free is dropped. Latency: from the frame's arrival (its
    due time when a file plays in real time) to its scores. Ends at the end of the source, on Ctrl-C
    (``stopped: "interrupted"``), or when the source breaks (``LiveSourceError``, raised once the frames
    before it are scored)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1 frame, got {stride}")
    recognizer.reset()  # a new source starts from empty caches and an empty window
    slot, stop = _LatestFrame(), threading.Event()
    live = realtime or not source.is_file
    started = time.monotonic()
    latencies: list[float] = []
    stopped = "end of the source"
    reader = threading.Thread(target=_read_live, args=(source, stride, live, slot, stop), daemon=True) \
        if live else None
    if reader is not None:
        reader.start()
    frames = iter(source.frames()) if reader is None else None
    try:
        while True:
            item = slot.take() if frames is None else _next_due(frames, stride, slot)
            if item is None:
                break
            number, frame, arrival = item
            scores = recognizer.push(frame.rgb)
            latency = time.monotonic() - arrival
            latencies.append(latency)
            on_update(StreamUpdate(number, frame.time, scores, latency))
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        stop.set()
    if slot.error is not None and stopped != "interrupted":
        raise slot.error
    return StreamSummary(slot.read, len(latencies), slot.dropped, tuple(latencies), time.monotonic() - started,
                         stopped)


def _next_due(frames: Iterator[LiveFrame], stride: int, slot: _LatestFrame) -> tuple[int, LiveFrame, float] | None:
    """The next ``stride``-th frame of a file read in this thread, as fast as the model goes."""
    for frame in frames:
        number = slot.read
        slot.read += 1
        if number % stride == 0:
            return number, frame, time.monotonic()
    return None


@dataclass
class LoadedStreamModel:
    """A recognizer and what the stream tools need with it: class names, the model's segments, the training
    clips' time between segments (None: unknown), and what runs the network."""

    recognizer: StreamRecognizer
    class_names: list[str]
    num_segments: int
    segment_seconds: float | None
    runtime: str


def load_stream_model(path: str | os.PathLike[str], exported: bool, window: int | None,
                      device: torch.device = torch.device("cpu")) -> LoadedStreamModel:
    """A checkpoint of a causal TSM (or of a TSN without shift) run in PyTorch, or, with ``exported``, its
    per-frame graph (``tools/export.py --stream``) on onnxruntime. ``window``: frames in the window consensus
    (None: the model's ``data.num_segments``)."""
    from tsn.config import Config
    from tsn.apps.export import stream_recognizer_from_file
    from tsn.evaluation.deployed import ExportError, read_description
    from tsn.evaluation.inference import load_trained

    if exported:
        description = read_description(path)
        if description.get("format") != "onnx-stream" or "config" not in description:
            raise ExportError(f"{path}: not a per-frame graph (tools/export.py --stream)")
        segments = Config.from_dict(description["config"]).data.num_segments
        recognizer = stream_recognizer_from_file(path, window or segments, device)
        return LoadedStreamModel(recognizer, list(description["class_names"]), segments,
                                 description["stream"].get("segment_seconds"), recognizer.step.runtime)
    trained = load_trained(path, device=device)
    data = trained.config.data
    recognizer = torch_recognizer(trained.model, window or data.num_segments, data.input_size, data.short_side, device)
    return LoadedStreamModel(recognizer, trained.class_names, data.num_segments, trained.segment_seconds,
                             f"pytorch eager ({device.type})")


def format_update(update: StreamUpdate, class_names: Sequence[str], top_k: int, as_json: bool) -> str:
    """One line for a scored frame: its time and number, the window's top classes, the latency."""
    order = np.argsort(-update.scores.window, kind="stable")[:top_k]
    top = [(class_names[i], float(update.scores.window[i])) for i in order]
    if as_json:
        return json.dumps({"time": round(update.time, 3), "frame": update.source_frame,
                           "top": [{"class": name, "probability": round(p, 6)} for name, p in top],
                           "latency_ms": round(update.latency * 1000, 1)})
    classes = "  ".join(f"{name} {p:.3f}" for name, p in top)
    return f"{update.time:9.2f} s  frame {update.source_frame:6d}  {classes}  ({update.latency * 1000:.0f} ms)"


def print_stream(path: str | os.PathLike[str], exported: bool, source_name: str,
                 device: torch.device = torch.device("cpu"), window: int | None = None, stride: int | None = None,
                 realtime: bool = False, top_k: int = 5, print_every: int = 1, as_json: bool = False) -> int:
    """Score the live source ``source_name`` (``open_live``: a file, camera or stream URL) with the model at
    ``path`` (``load_stream_model``) every ``stride`` frames (None: one per training segment, ``segment_stride``)
    and print every ``print_every``-th scored frame's line (``format_update``) to stdout; what runs, and the
    summary as JSON, to stderr. Returns 0, or 1 when the stream broke."""
    loaded = load_stream_model(path, exported, window, device)
    source = open_live(source_name)
    every = stride or segment_stride(source.fps, loaded.segment_seconds)
    if not stride and source.fps <= 0:
        print(f"warning: {source_name} does not say its frame rate: every frame is scored; give --stream-stride N "
              f"(frames between the segments the model was trained on)", file=sys.stderr)
    print(f"running {path} with {loaded.runtime} on {source_name}: every {every} frame(s), "
          f"window {loaded.recognizer.window}", file=sys.stderr)

    def show(update: StreamUpdate) -> None:
        if update.scores.index % print_every == 0:
            print(format_update(update, loaded.class_names, top_k, as_json), flush=True)

    try:
        summary = run_stream(loaded.recognizer, source, every, realtime, show)
    except LiveSourceError as error:
        print(f"stream broken: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary.as_dict()), file=sys.stderr)
    return 0


def stream_accuracy(loaded: LoadedStreamModel, videos: Sequence[tuple[str, int]], strides: Sequence[int],
                    backend: str = "auto") -> list[dict[str, object]]:
    """Top-1 of streaming each video (path, label) at each stride: the window's top class after the video's
    last scored frame, and the share of scored frames (once the window is full) whose window is right.
    Every frame is decoded once per video (``tsn.io.iter_frames``) and the strides take their frames from it."""
    from tsn.io import VideoReadError, iter_frames

    totals = {stride: [0, 0, 0, 0] for stride in strides}  # last right, videos, frames right, frames
    for path, label in videos:
        frames = list(iter_frames(path, backend))
        if not frames:
            raise VideoReadError(path, "no frames to stream")
        for stride in strides:
            loaded.recognizer.reset()
            scores = [loaded.recognizer.push(frame) for frame in frames[::stride]]
            full = scores[loaded.recognizer.window - 1:] or scores[-1:]
            total = totals[stride]
            total[0] += int(np.argmax(scores[-1].window) == label)
            total[1] += 1
            total[2] += sum(int(np.argmax(item.window) == label) for item in full)
            total[3] += len(full)
    return [{"stride": stride, "videos": t[1], "last_window_top1": round(t[0] / t[1], 4),
             "frame_top1": round(t[2] / t[3], 4), "scored_frames": t[3]} for stride, t in totals.items()]
