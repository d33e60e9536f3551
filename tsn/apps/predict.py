"""Predict the actions in videos with a trained checkpoint: ``Predictor.from_checkpoint(path).predict(video)``.

A video is scored as ``tools/test.py`` scores it: the checkpoint's test views (``test.num_clips``
temporal clips x ``test.crops`` spatial crops, or the ones asked for), softmax probabilities
averaged over the views. A long video can be cut into windows of ``window`` seconds every
``stride`` seconds, each scored on its own as if it were a whole video; only the frames a window
samples are decoded, so memory does not grow with the video's length. With windows, the
whole-video probabilities are the windows' averaged so that every frame weighs the same
(``window_weights``: a short last window, or the less covered ends of overlapping windows, count for
their frames), not one set of views spread over the whole video.

Everything returned is plain data (dataclasses of numbers and strings; ``as_dict()`` for JSON).
``predict_videos`` runs ``tools/predict.py``: the videos of ``collect_videos`` printed as a table, JSON lines
or CSV, with a labelled copy of each where asked (``copy_path``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from tsn.config import Config, ConfigError
from tsn.data.dataset import ClipDataset
from tsn.data.lists import VideoRecord, read_video_list
from tsn.build import build_clip_dataset
from tsn.apps.predict_html import PredictPage
from tsn.errors import UsageError
from tsn.evaluation.evaluate import autocast_context, view_scores
from tsn.evaluation.deployed import ExportedTSN
from tsn.evaluation.inference import TrainedModel, load_trained
from tsn.io import VideoInfo, VideoReadError, iter_frames
from tsn.jobs.extract import VIDEO_EXTENSIONS, find_videos
from tsn.jobs.writer import write_video
from tsn.models import TSN

# A frame on a window's boundary belongs to the window starting there; timestamps converted to
# seconds carry rounding errors far below this.
_BOUNDARY_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class ClassScore:
    """One class of a prediction: its id (the model's output index), its name, its probability."""

    class_id: int
    name: str
    probability: float


@dataclass(frozen=True)
class Window:
    """Frames ``first .. stop - 1`` of a video, the part of it from ``start`` to ``end`` seconds."""

    first: int
    stop: int
    start: float
    end: float


@dataclass(frozen=True)
class WindowPrediction:
    """The top classes of one window of a video, and its probabilities for every class."""

    start: float
    end: float
    first_frame: int
    last_frame: int
    top: tuple[ClassScore, ...]
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class VideoPrediction:
    """A video's top classes, its probabilities for every class (index = class id), and its windows'
    predictions (empty without windows); ``duration`` in seconds (0.0 where the frame rate is unknown);
    ``reader``: the backend whose frame numbers ``first_frame``/``last_frame`` are."""

    video: str
    num_frames: int
    duration: float
    top: tuple[ClassScore, ...]
    probabilities: tuple[float, ...]
    windows: tuple[WindowPrediction, ...] = ()
    reader: str = ""  # the backend that numbered and read the frames (tsn.io.VideoInfo.backend)

    def as_dict(self, with_probabilities: bool = False) -> dict:
        """Plain dict for JSON; the full probability vector only when asked (it has one entry per class)."""
        out = dataclasses.asdict(self)
        if not with_probabilities:
            for part in (out, *out["windows"]):
                del part["probabilities"]
        return out


def frame_times(info: VideoInfo) -> np.ndarray:
    """Seconds from the first frame to each frame, float64 ``(num_frames,)``: the frame index's timestamps
    where the backend keeps one (exact for variable frame rates), else ``i / fps``."""
    if info.index is not None and info.index.count >= info.num_frames:
        stamps = info.index.stamps()[:info.num_frames].astype(np.float64)
        return (stamps - stamps[0]) * info.index.seconds_per_unit
    if info.fps > 0:
        return np.arange(info.num_frames, dtype=np.float64) / info.fps
    raise ValueError("the video has no frame rate or timestamps to place windows in")


def split_windows(times: np.ndarray, frame_duration: float, window: float, stride: float) -> list[Window]:
    """Windows of ``window`` seconds starting every ``stride`` seconds over frames at ``times`` (seconds,
    increasing), each showing for ``frame_duration``; the last one ends at the video's end (shorter when the
    rest is), windows holding no frame (gaps of a variable frame rate) are left out. ``stride <= window``,
    so that every frame is in a window."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be > 0 seconds, got {window} and {stride}")
    if stride > window:
        raise ValueError(f"stride {stride} s is longer than the window {window} s: frames between windows "
                         "would never be seen")
    if times.size == 0:
        return []
    duration = float(times[-1]) + frame_duration
    windows = []
    k = 0
    while True:
        start = k * stride
        end = min(start + window, duration)
        first, stop = np.searchsorted(times, [start - _BOUNDARY_TOLERANCE_S, end - _BOUNDARY_TOLERANCE_S])
        if stop > first:
            windows.append(Window(int(first), int(stop), start, end))
        if start + window >= duration - _BOUNDARY_TOLERANCE_S:
            return windows
        k += 1


def window_weights(windows: Sequence[Window], num_frames: int) -> np.ndarray:
    """Each window's weight in the whole-video average, ``(len(windows),)``: the sum over its frames of
    1 / (the windows holding that frame), so that every frame weighs the same whatever the overlap, and a
    short last window weighs its frames only."""
    cover = np.zeros(num_frames, dtype=np.float64)
    for w in windows:
        cover[w.first:w.stop] += 1
    return np.array([(1.0 / cover[w.first:w.stop]).sum() for w in windows])


def top_classes(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> tuple[ClassScore, ...]:
    """The ``k`` most probable classes, most probable first (exact ties: the lower class id first)."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return tuple(ClassScore(int(i), class_names[i], float(probabilities[i])) for i in order)


def single_video_dataset(config: Config, path: str | os.PathLike[str], num_clips: int | None = None,
                         crops: int | None = None, class_names: Sequence[str] | None = None) -> ClipDataset:
    """A test-mode dataset (``build_clip_dataset``) of the one video at ``path``: a video file, or a frame
    folder (a flow folder for a flow model); read errors are raised, not skipped."""
    is_folder = Path(path).is_dir()
    if config.data.modality == "flow" and not is_folder:
        raise ConfigError("data.modality", f"flow: a flow model reads flow folders, not the video {path}: extract "
                                           "them with tools/extract_flow.py")
    if config.data.modality != "flow":
        data = dataclasses.replace(config.data, format="rawframes" if is_folder else "video")
        config = dataclasses.replace(config, data=data)
    return build_clip_dataset(config, "test", [VideoRecord(os.fspath(path), 0)], Path(""), num_clips, crops, "raise",
                              class_names)


class Predictor:
    """A trained TSN and its test views, scoring videos one at a time.

    ``trained``: a checkpoint's ``TrainedModel`` (PyTorch), or an ``ExportedTSN`` (a file of
    ``tools/export.py`` on onnxruntime or TorchScript, which normalises its uint8 frames itself).
    ``num_clips``/``crops``: views per video (or per window); default the config's ``test.num_clips``
    and ``test.crops``. Videos are read with the config's ``data.backend``. ``runtime`` says what runs
    the network.
    """

    def __init__(self, trained: TrainedModel | ExportedTSN, device: torch.device | str = "cpu",
                 num_clips: int | None = None, crops: int | None = None) -> None:
        cfg = trained.config
        if cfg.data.modality == "flow":
            raise ConfigError("data.modality", "flow: a flow model reads flow folders, not videos: extract "
                                               "them with tools/extract_flow.py and score them with tools/test.py")
        self.config = cfg
        self.device = torch.device(device)
        self.class_names = list(trained.class_names)
        self.num_clips = num_clips
        self.crops = crops
        if isinstance(trained, ExportedTSN):
            self.model: TSN | ExportedTSN = trained
            self.normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # inside the file
            self.channels_last = False
            self.runtime = trained.runtime
            return
        self.model = trained.model.to(self.device)
        self.channels_last = cfg.train.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.normalize = (tuple(self.model.spec.mean), tuple(self.model.spec.std))
        self.runtime = f"pytorch eager ({self.device.type})"

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike[str], config: Config | None = None,
                        device: torch.device | str = "cpu", num_clips: int | None = None, crops: int | None = None,
                        overrides: Sequence[str] = ()) -> Predictor:
        """The predictor of a ``tools/train.py`` checkpoint (``tsn.evaluation.inference.load_trained``: the
        network and class names come from the checkpoint; ``config`` and ``overrides`` only to change them)."""
        return cls(load_trained(checkpoint, config, device, overrides), device, num_clips, crops)

    @classmethod
    def from_exported(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu",
                      num_clips: int | None = None, crops: int | None = None) -> Predictor:
        """The predictor of a file of ``tools/export.py`` (the class names and config it carries), run by
        onnxruntime (its CUDA provider on a CUDA ``device`` where present) or TorchScript."""
        return cls(ExportedTSN(path, torch.device(device)), device, num_clips, crops)

    def single_dataset(self, video: str | os.PathLike[str]) -> ClipDataset:
        """The test-mode dataset of ``video`` alone, as this predictor reads it."""
        return single_video_dataset(self.config, video, self.num_clips, self.crops, self.class_names)

    @torch.no_grad()
    def _probabilities(self, dataset: ClipDataset, frames: tuple[int, int] | None = None) -> np.ndarray:
        """Mean softmax over the views of the video (or of its frames ``first .. stop - 1``) -> (classes,)."""
        clip = dataset.load(0, np.random.default_rng(0), frames=frames)  # (V, T, C, H, W) uint8
        mean, std = self.normalize if self.normalize is not None else (None, None)
        test = self.config.test
        with autocast_context(self.device, self.config.train.amp):
            probs = view_scores(self.model, clip[None].to(self.device), test.clips_per_forward,
                                self.channels_last, mean, std, dataset.view_mirror())  # (1, classes)
        return probs[0].double().cpu().numpy()

    def predict(self, video: str | os.PathLike[str], top_k: int = 5, window: float | None = None,
                stride: float | None = None) -> VideoPrediction:
        """Score ``video``: its ``top_k`` classes, and with ``window`` (seconds) those of each window of
        ``window`` seconds every ``stride`` seconds (default ``window``: windows side by side).

        Raises ``VideoReadError`` (or ``OSError``) for a video that cannot be read."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        dataset = self.single_dataset(video)
        k = min(top_k, len(self.class_names))
        if window is None:
            probs = self._probabilities(dataset)
            info = dataset.video_info(0)
            return VideoPrediction(os.fspath(video), info.num_frames, round(_duration(info), 6),
                                   top_classes(probs, self.class_names, k), tuple(probs.tolist()), (), info.backend)
        info = dataset.video_info(0)
        try:
            times = frame_times(info)
        except ValueError as error:
            raise VideoReadError(os.fspath(video), str(error)) from None
        windows = split_windows(times, _frame_duration(info, times), window, stride or window)
        if not windows:
            raise VideoReadError(os.fspath(video), "no frame falls in a window (no frame rate?)")
        window_probs = np.stack([self._probabilities(dataset, (w.first, w.stop)) for w in windows])  # (W, classes)
        probs = np.average(window_probs, axis=0, weights=window_weights(windows, info.num_frames))
        predictions = tuple(WindowPrediction(round(w.start, 6), round(w.end, 6), w.first, w.stop - 1,
                                             top_classes(p, self.class_names, k), tuple(p.tolist()))
                            for w, p in zip(windows, window_probs))
        return VideoPrediction(os.fspath(video), info.num_frames, round(_duration(info), 6),
                               top_classes(probs, self.class_names, k), tuple(probs.tolist()), predictions,
                               info.backend)


def _frame_duration(info: VideoInfo, times: np.ndarray) -> float:
    """How long one frame shows: ``1 / fps``, else the median gap between frames."""
    if info.fps > 0:
        return 1.0 / info.fps
    return float(np.median(np.diff(times))) if times.size > 1 else 0.0


def _duration(info: VideoInfo) -> float:
    try:
        times = frame_times(info)
    except ValueError:
        return 0.0
    return float(times[-1] + _frame_duration(info, times)) if times.size else 0.0


def label_at(prediction: VideoPrediction, frame: int) -> ClassScore:
    """The top class shown on ``frame``: that of the window whose middle frame is nearest among those
    holding it (the nearest window where none does), else (no windows) the whole video's."""
    windows = prediction.windows
    holding = [w for w in windows if w.first_frame <= frame <= w.last_frame] or list(windows)
    if not holding:
        return prediction.top[0]
    return min(holding, key=lambda w: abs((w.first_frame + w.last_frame) / 2 - frame)).top[0]


def write_labelled_video(prediction: VideoPrediction, source: str | os.PathLike[str], out: str | os.PathLike[str]) -> int:
    """Copy ``source`` to ``out`` (H.264 in MP4, at the source's mean frame rate) with the current top label and its
    probability drawn on each frame (``label_at``); decoded by the reader that numbered the prediction's frames
    and encoded one frame at a time, so memory does not grow with the length. Returns the frames written."""
    import cv2

    fps = prediction.num_frames / prediction.duration if prediction.duration > 0 else 25.0

    def labelled() -> Iterable[np.ndarray]:
        for i, frame in enumerate(iter_frames(source, prediction.reader or "auto")):
            top = label_at(prediction, i)
            text = f"{top.name} {top.probability:.2f}"
            frame = np.ascontiguousarray(frame)
            scale = max(0.4, frame.shape[0] / 480)
            thickness = max(1, round(2 * scale))
            origin = (8, 8 + round(22 * scale))
            # white on a black outline: readable on any background
            cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
            cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
            yield frame

    return write_video(out, labelled(), fps)


def format_table(prediction: VideoPrediction) -> str:
    """Plain text: the video and its top classes, then one line per window."""
    def classes(top: Sequence[ClassScore]) -> str:
        return "  ".join(f"{score.name} {score.probability:.3f}" for score in top)

    lines = [f"{prediction.video}  ({prediction.duration:.1f} s, {prediction.num_frames} frames)  "
             f"{classes(prediction.top)}"]
    for w in prediction.windows:
        lines.append(f"  {w.start:8.2f}-{w.end:8.2f} s  {classes(w.top)}")
    return "\n".join(lines)


def format_json_line(prediction: VideoPrediction) -> str:
    """One JSON object on one line (``VideoPrediction.as_dict``)."""
    return json.dumps(prediction.as_dict())


CSV_HEADER = ("video", "window", "start_s", "end_s", "rank", "class_id", "class", "probability")


def format_csv_rows(prediction: VideoPrediction) -> str:
    """CSV rows (no header; ``CSV_HEADER``): one per top class of the whole video (window ``all``) and of
    each window (window 0, 1, ...)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    parts = [("all", 0.0, prediction.duration, prediction.top)]
    parts += [(str(i), w.start, w.end, w.top) for i, w in enumerate(prediction.windows)]
    for window, start, end, top in parts:
        for rank, score in enumerate(top, 1):
            writer.writerow([prediction.video, window, f"{start:.3f}", f"{end:.3f}", rank, score.class_id,
                             score.name, f"{score.probability:.6f}"])
    return buffer.getvalue()


# What tools/predict.py prints per video: format_table, format_json_line, format_csv_rows.
OUTPUT_FORMATS = ("text", "json", "csv")


def format_prediction(prediction: VideoPrediction, output_format: str) -> str:
    """The lines printed for one video in ``output_format`` (one of ``OUTPUT_FORMATS``), no newline at the end."""
    if output_format == "json":
        return format_json_line(prediction)
    if output_format == "csv":
        return format_csv_rows(prediction).rstrip("\n")
    return format_table(prediction)


def collect_videos(paths: Sequence[Path], list_file: Path | None, src: Path) -> list[tuple[Path, str]]:
    """The videos to predict, in order: ``(path, name for the output copy)``; a folder gives every video under it,
    ``list_file`` (paths relative to ``src``) its videos after those of ``paths``."""
    videos = []
    for path in paths:
        if path.is_dir():
            videos += [(path / job.video, job.video) for job in find_videos(path)[0]]
        else:
            videos.append((path, path.name))
    if list_file is not None:
        videos += [(src / record.path, record.path) for record in read_video_list(list_file)]
    return videos


def copy_path(out_video: Path, name: str, count: int) -> Path:
    """Where the labelled copy of the video ``name`` (one of ``count``) goes: ``out_video`` itself when it names
    an .mp4 file (one video only), else ``out_video/<name>`` with an ``.mp4`` suffix; ``UsageError`` otherwise."""
    if out_video.suffix.lower() in VIDEO_EXTENSIONS:
        if out_video.suffix.lower() != ".mp4":
            raise UsageError(f"--out-video {out_video}: the copy is an MP4 file, name it .mp4 (or give a folder)")
        if count > 1:
            raise UsageError(f"--out-video {out_video} is one file, but there are {count} videos: give a folder")
        return out_video
    return out_video / Path(name).with_suffix(".mp4")


def check_copy_paths(out_video: Path, videos: Sequence[tuple[Path, str]]) -> None:
    """``UsageError`` unless every video's labelled copy has its own path, inside ``out_video`` when that is a
    folder, and no copy would replace a video (its own or another one given)."""
    paths = [copy_path(out_video, name, len(videos)).resolve() for _, name in videos]
    sources = {path.resolve() for path, _ in videos}
    root = out_video.resolve()
    seen: dict[Path, str] = {}
    for (_, name), path in zip(videos, paths):
        if path in sources:
            raise UsageError(f"--out-video: the copy of {name} would replace the video {path}")
        if path != root and root not in path.parents:
            raise UsageError(f"--out-video: the copy of {name} would land outside {out_video}")
        if path in seen:
            raise UsageError(f"--out-video: {seen[path]} and {name} would both be copied to {path}")
        seen[path] = name


def predict_videos(predictor: Predictor, videos: Sequence[tuple[Path, str]], top_k: int = 5,
                   window: float | None = None, stride: float | None = None, output_format: str = "text",
                   out_video: Path | None = None, progress: bool = True, html: Path | None = None) -> int:
    """Predict each of ``videos`` (``collect_videos``) and print it to stdout in ``output_format`` (CSV: the
    header first), with its labelled copy under ``out_video`` where given (``copy_path``; check the paths first
    with ``check_copy_paths``), and the page ``html`` (``tsn.apps.predict_html``) where given. A video that
    cannot be read goes to stderr as ``failed: <video>: <reason>``. Returns how many failed."""
    failed = 0
    page = PredictPage(predictor) if html is not None else None
    if output_format == "csv":
        print(",".join(CSV_HEADER))
    for path, name in tqdm(videos, desc="predict", unit="video", disable=not progress, file=sys.stderr):
        try:
            prediction = predictor.predict(path, top_k, window, stride)
            if out_video is not None:
                write_labelled_video(prediction, path, copy_path(out_video, name, len(videos)))
            if page is not None:
                page.add(prediction)
        except (VideoReadError, OSError) as error:
            reason = error.reason if isinstance(error, VideoReadError) else str(error)
            tqdm.write(f"failed: {path}: {reason}", file=sys.stderr)
            if page is not None:
                page.fail(str(path), reason)
            failed += 1
            continue
        tqdm.write(format_prediction(prediction, output_format), file=sys.stdout)
        sys.stdout.flush()
    if page is not None and html is not None:
        page.write(html)
    if failed:
        print(f"{failed} of {len(videos)} videos failed", file=sys.stderr)
    return failed
