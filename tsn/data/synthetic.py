"""The embedded demo data set: small deterministic videos of moving shapes, with lists and class names.

Each class is a shape with its own motion and its own colour family, e.g. a ball bouncing
across the frame or a square rotating in place. A 3-segment TSN averages per-frame features
and so cannot tell the order of its frames; the classes are therefore separable frame by
frame (shape, colour) and the motion makes each frame of a video different. Every video draws
its own background (dim, desaturated gradient), sensor noise per frame, object size, start
position, speed, direction and exact hue, so the task is not a lookup.

Layout under ``out_dir``::

    videos/<class name>/<split>_<NNN>.mp4   (mp4v, size x size, num_frames frames, 25 fps)
    train.txt, val.txt                       video lists (``relative/path LABEL``)
    classes.txt                              one class name a line, label order
    manifest.json                            parameters and file sizes, written last

Video ``i`` of class ``c`` in split ``s`` (0 train, 1 val) is drawn from
``np.random.default_rng([seed, s, c, i])``, so train and val never share a video and the same
arguments always give the same frames. A call whose ``manifest.json`` matches its arguments
and whose files are all present with their recorded sizes returns at once; otherwise
everything is written again (the manifest last, so an interrupted run is redone).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np

from tsn.data.lists import VideoRecord, write_class_names, write_video_list
from tsn.fileio import atomic_write_text

MANIFEST_VERSION = 1
FPS = 25.0
SPLITS = ("train", "val")


class DemoData(NamedTuple):
    """Where the demo data set lies: the root the lists are relative to, the two lists, the class names."""

    root: Path
    train_list: Path
    val_list: Path
    classes: Path


class Motion(NamedTuple):
    """Per-video drawing parameters, all in pixels or radians."""

    size: float
    x: float
    y: float
    speed: float
    phase: float
    direction: int  # +1 or -1: which way the motion turns or runs; both are the same class


# A class draws its shape on an RGB frame at time u in [0, 1] with colour and motion.
Draw = Callable[[np.ndarray, float, tuple[int, int, int], Motion, int], None]


def _points(frame_size: int, xy: np.ndarray) -> np.ndarray:
    # cv2 polygons take int32 (N, 1, 2) in fixed point with 4 fractional bits for smooth motion.
    return np.round(np.clip(xy, -frame_size, 2 * frame_size) * 16).astype(np.int32).reshape(-1, 1, 2)


def _ball_bouncing(frame: np.ndarray, u: float, colour: tuple[int, int, int], m: Motion, s: int) -> None:
    # Across the frame at constant speed, bouncing off the floor: |sin| height.
    x = m.x + m.direction * m.speed * u * s
    x = s - abs(x % (2 * s) - s)  # reflect at both walls
    floor = s - m.size
    y = floor - abs(math.sin(math.pi * (2.0 * u + m.phase))) * (floor - m.size) * 0.9
    cv2.circle(frame, (round(x * 16), round(y * 16)), round(m.size * 16), colour, -1, cv2.LINE_AA, 4)


def _square_rotating(frame: np.ndarray, u: float, colour: tuple[int, int, int], m: Motion, s: int) -> None:
    angle = m.phase + m.direction * m.speed * u * math.pi
    corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64) * m.size * 0.8
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    cv2.fillPoly(frame, [_points(s, corners @ rotation.T + (m.x, m.y))], colour, cv2.LINE_AA, 4)


def _triangle_growing(frame: np.ndarray, u: float, colour: tuple[int, int, int], m: Motion, s: int) -> None:
    scale = m.size * (0.35 + 0.75 * u)
    corners = np.array([(0.0, -1.0), (0.87, 0.5), (-0.87, 0.5)]) * scale
    cv2.fillPoly(frame, [_points(s, corners + (m.x, m.y))], colour, cv2.LINE_AA, 4)


def _bar_sliding(frame: np.ndarray, u: float, colour: tuple[int, int, int], m: Motion, s: int) -> None:
    # A long thin bar sliding left and right once over the clip.
    x = m.x + m.direction * math.sin(2 * math.pi * u + m.phase) * s * 0.25
    half = np.array([m.size * 1.4, m.size * 0.3])
    corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * half + (x, m.y)
    cv2.fillPoly(frame, [_points(s, corners)], colour, cv2.LINE_AA, 4)


def _ring_pulsing(frame: np.ndarray, u: float, colour: tuple[int, int, int], m: Motion, s: int) -> None:
    radius = m.size * (0.75 + 0.35 * math.sin(2 * math.pi * m.speed * u + m.phase))
    thickness = max(2, round(m.size * 0.25))
    cv2.circle(frame, (round(m.x * 16), round(m.y * 16)), round(radius * 16), colour, thickness, cv2.LINE_AA, 4)


def _cross_orbiting(frame: np.ndarray, u: float, colour: tuple[int, int, int], m: Motion, s: int) -> None:
    angle = m.phase + m.direction * m.speed * math.pi * u
    centre = np.array([s / 2 + math.cos(angle) * s * 0.22, s / 2 + math.sin(angle) * s * 0.22])
    arm, width = m.size * 0.9, m.size * 0.3
    for half in (np.array([arm, width]), np.array([width, arm])):
        corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * half + centre
        cv2.fillPoly(frame, [_points(s, corners)], colour, cv2.LINE_AA, 4)


# (name, draw function), in label order. Hues are spread evenly over the classes used.
CLASSES: tuple[tuple[str, Draw], ...] = (
    ("ball_bouncing", _ball_bouncing),
    ("square_rotating", _square_rotating),
    ("triangle_growing", _triangle_growing),
    ("bar_sliding", _bar_sliding),
    ("ring_pulsing", _ring_pulsing),
    ("cross_orbiting", _cross_orbiting),
)


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    """hue in degrees, saturation and value in [0, 1] -> RGB 0..255."""
    pixel = np.array([[[hue / 2.0, saturation * 255.0, value * 255.0]]], dtype=np.float32).round().astype(np.uint8)
    r, g, b = cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def demo_video_frames(label: int, num_classes: int, num_frames: int, size: int,
                      rng: np.random.Generator) -> np.ndarray:
    """The frames of one demo video of class ``label``: RGB uint8 (num_frames, size, size, 3)."""
    _, draw = CLASSES[label]
    hue = (360.0 * label / num_classes + rng.uniform(-12, 12)) % 360
    colour = _hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0))
    # Background: a dim, desaturated linear gradient in a random direction.
    low = np.array(_hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.25), rng.uniform(0.1, 0.35)), np.float32)
    high = np.array(_hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.25), rng.uniform(0.3, 0.55)), np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    ramp = (math.cos(angle) * (xs - 0.5) + math.sin(angle) * (ys - 0.5)) / math.sqrt(0.5) + 0.5  # 0..1 roughly
    background = low + np.clip(ramp, 0, 1)[..., None] * (high - low)  # (size, size, 3)
    motion = Motion(size=rng.uniform(0.12, 0.2) * size, x=rng.uniform(0.3, 0.7) * size,
                    y=rng.uniform(0.3, 0.7) * size, speed=rng.uniform(1.0, 2.0), phase=rng.uniform(0, 2 * math.pi),
                    direction=1 if rng.random() < 0.5 else -1)
    noise_sigma = rng.uniform(3.0, 10.0)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        noisy = background + rng.normal(0.0, noise_sigma, size=background.shape).astype(np.float32)
        frame = np.clip(noisy, 0, 255).astype(np.uint8)
        draw(frame, t / max(num_frames - 1, 1), colour, motion, size)
        frames[t] = frame
    return frames


def _write_video(path: Path, frames: np.ndarray, fourcc: str = "mp4v") -> None:
    """Write RGB frames to ``path`` with OpenCV's ``fourcc`` encoder (through a temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*fourcc), FPS, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write {fourcc} video here")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    os.replace(partial, path)


def _manifest_matches(out_dir: Path, params: dict[str, int]) -> bool:
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return False
    if manifest.get("version") != MANIFEST_VERSION or manifest.get("params") != params:
        return False
    files = manifest["files"]
    return bool(files) and all((out_dir / name).is_file() and (out_dir / name).stat().st_size == size
                               for name, size in files.items())


def make_demo_dataset(out_dir: str | os.PathLike, num_classes: int = 4, videos_per_class_train: int = 30,
                      videos_per_class_val: int = 10, num_frames: int = 32, size: int = 112,
                      seed: int = 0) -> DemoData:
    """Write (or reuse) the demo data set under ``out_dir``; returns its root, lists and class file.

    In: number of classes (1 to ``len(CLASSES)``), videos per class in each split, frames per
    video, frame side in pixels (a multiple of 16, at least 64: decord misreads some other
    widths) and the seed. Out: ``DemoData`` with paths; the lists are relative to ``out_dir``.
    """
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(CLASSES)}, got {num_classes}")
    if size < 64 or size % 16:
        raise ValueError(f"size must be a multiple of 16 and at least 64, got {size}")
    if num_frames < 1 or videos_per_class_train < 1 or videos_per_class_val < 1:
        raise ValueError("num_frames and videos per class must be >= 1")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    root = Path(out_dir)
    result = DemoData(root, root / "train.txt", root / "val.txt", root / "classes.txt")
    params = {"num_classes": num_classes, "videos_per_class_train": videos_per_class_train,
              "videos_per_class_val": videos_per_class_val, "num_frames": num_frames, "size": size, "seed": seed}
    if _manifest_matches(root, params):
        return result
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").unlink(missing_ok=True)
    names = [name for name, _ in CLASSES[:num_classes]]
    counts = (videos_per_class_train, videos_per_class_val)
    lists = (result.train_list, result.val_list)
    files: dict[str, int] = {}
    for split_code, (split, count, list_path) in enumerate(zip(SPLITS, counts, lists)):
        records = []
        for label, name in enumerate(names):
            for i in range(count):
                relative = f"videos/{name}/{split}_{i:03d}.mp4"
                rng = np.random.default_rng([seed, split_code, label, i])
                _write_video(root / relative, demo_video_frames(label, num_classes, num_frames, size, rng))
                files[relative] = (root / relative).stat().st_size
                records.append(VideoRecord(relative, label))
        write_video_list(records, list_path)
        files[list_path.name] = list_path.stat().st_size
    write_class_names(names, result.classes)
    files[result.classes.name] = result.classes.stat().st_size
    manifest = {"version": MANIFEST_VERSION, "params": params, "files": files}
    atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return result


ORDER_CLASSES = ("growing", "shrinking")


def make_order_dataset(out_dir: str | os.PathLike, videos_train: int = 24, videos_val: int = 12, num_frames: int = 8,
                       size: int = 64, seed: int = 0) -> DemoData:
    """A data set whose two classes differ only in the order of their frames: a shape that grows
    (``growing``) and the same frames played backwards (``shrinking``).

    Every clip of ``num_frames`` frames is written twice, forwards with label 0 and backwards with label 1,
    as intra-only MJPEG AVIs (each frame coded alone, so both copies decode to the very same frames). A
    model that pools its frames without order (TSN with ``avg``, ``max`` or ``feature_max``) scores both
    copies alike when it samples every frame (``data.num_segments`` = ``num_frames``): it is at chance by
    construction, while a model that sees order (TSM) can learn it. Layout as ``make_demo_dataset``
    (``videos/<class>/<split>_<NNN>.avi``, ``train.txt``, ``val.txt``, ``classes.txt``), rewritten on every call.
    """
    if videos_train < 1 or videos_val < 1 or num_frames < 2:
        raise ValueError("videos per split must be >= 1 and num_frames >= 2")
    root = Path(out_dir)
    result = DemoData(root, root / "train.txt", root / "val.txt", root / "classes.txt")
    for split_code, (split, count, list_path) in enumerate(zip(SPLITS, (videos_train, videos_val),
                                                                 (result.train_list, result.val_list))):
        records = []
        for i in range(count):
            rng = np.random.default_rng([seed, split_code, 99, i])
            # the triangle_growing class of the demo, in a random colour
            frames = demo_video_frames(2, 6, num_frames, size, rng)
            for label, ordered in enumerate((frames, frames[::-1])):
                relative = f"videos/{ORDER_CLASSES[label]}/{split}_{i:03d}.avi"
                _write_video(root / relative, np.ascontiguousarray(ordered), fourcc="MJPG")
                records.append(VideoRecord(relative, label))
        write_video_list(records, list_path)
    write_class_names(list(ORDER_CLASSES), result.classes)
    return result
