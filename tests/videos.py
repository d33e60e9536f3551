"""Tiny videos made by the tests themselves, whose frames each encode their own index.

A frame is a 4x4 grid of cells. Cell 0 (top left) is always pure red, so a reader that returns
BGR instead of RGB is caught; cells 1..15 hold the frame index in binary (white = 1, black = 0),
least significant bit first. Cells are large blocks, so lossy codecs keep them readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

GRID = 4
MAX_INDEX = 2 ** (GRID * GRID - 1) - 1


def index_frame(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    """RGB uint8 (height, width, 3) frame encoding ``index``."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"index {index} outside 0..{MAX_INDEX}")
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    cell_h, cell_w = height // GRID, width // GRID
    for cell in range(GRID * GRID):
        row, col = divmod(cell, GRID)
        block = frame[row * cell_h:(row + 1) * cell_h, col * cell_w:(col + 1) * cell_w]
        if cell == 0:
            block[:] = (255, 0, 0)
        elif (index >> (cell - 1)) & 1:
            block[:] = 255
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Decode the index from an RGB frame made by ``index_frame`` (any resolution it was scaled to)."""
    height, width = frame.shape[:2]
    cell_h, cell_w = height / GRID, width / GRID
    def cell_mean(cell: int) -> np.ndarray:
        row, col = divmod(cell, GRID)
        # Sample the centre half of the cell: codecs smear the edges.
        y0, y1 = int((row + 0.25) * cell_h), int((row + 0.75) * cell_h)
        x0, x1 = int((col + 0.25) * cell_w), int((col + 0.75) * cell_w)
        return frame[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].reshape(-1, 3).mean(axis=0)
    red = cell_mean(0)
    if not (red[0] > 150 and red[1] < 100 and red[2] < 100):
        raise AssertionError(f"red marker cell reads {red.round()}: channels are not RGB")
    index = 0
    for cell in range(1, GRID * GRID):
        if cell_mean(cell).mean() > 128:
            index |= 1 << (cell - 1)
    return index


def make_index_video(path: Path, num_frames: int, width: int = 64, height: int = 48, fps: float = 25.0,
                     fourcc: str = "mp4v") -> Path:
    """Write a video whose frame i encodes i (``mp4v`` in .mp4/.avi, or ``MJPG`` in .avi)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with fourcc {fourcc}")
    for i in range(num_frames):
        writer.write(cv2.cvtColor(index_frame(i, width, height), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def make_index_video_set(root: Path, labels: Sequence[int], num_frames: Sequence[int], classes: Sequence[str],
                         width: int = 64, height: int = 48) -> list[str]:
    """Index videos ``root/videos/v<i>.mp4`` (``num_frames[i]`` frames, label ``labels[i]``) and
    ``root/classes.txt``; returns their list lines (``"videos/v<i>.mp4 <label>\\n"``), for the caller's list."""
    lines = []
    for i, (label, frames) in enumerate(zip(labels, num_frames)):
        make_index_video(root / "videos" / f"v{i}.mp4", frames, width=width, height=height)
        lines.append(f"videos/v{i}.mp4 {label}\n")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    return lines


def make_bframe_index_video(path: Path, num_frames: int, codec: str = "libx264", gop: int = 12,
                            open_gop: bool = False, width: int = 64, height: int = 48) -> Path:
    """An index video with B-frames (3 between references, some of them non-reference) and a keyframe
    every ``gop`` frames, encoded by PyAV's bundled encoders (``libx264`` or ``libx265``), in .mp4/.mkv."""
    import av  # the tests' own encoder; the readers under test never encode

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        params = f"bframes=3:keyint={gop}:min-keyint={gop}:scenecut=0:open-gop={int(open_gop)}"
        if codec == "libx264":
            stream.options = {"x264-params": f"{params}:b-pyramid=normal:log-level=error"}
        else:
            stream.options = {"x265-params": f"{params}:b-pyramid=1:log-level=error"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(index_frame(i, width, height), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
