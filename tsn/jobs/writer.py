"""Writing a video with PyAV's bundled H.264 encoder (no system FFmpeg): ``write_video``.

The file appears complete or not at all: frames are encoded into a hidden temporary file beside
the target (``tsn.jobs.prepare.encode_video``), renamed into place once the container is closed.
"""

from __future__ import annotations

import os
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from tsn.jobs.prepare import PrepareSettings, encode_video

# A keyframe every 10 s at 25 fps and a fast preset: a file to watch, written once, not to sample from
# (tools/prepare_videos.py makes those).
WATCH_SETTINGS = PrepareSettings(short_side=0, keyframe_interval=250, crf=23, preset="veryfast")


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float | Fraction) -> int:
    """Encode RGB uint8 frames ``(H, W, 3)`` (all of one size) as H.264 in the MP4 file ``path`` at ``fps``;
    returns the frame count. An odd last row or column is dropped (4:2:0 needs even sides). Nothing is left
    at ``path`` when encoding fails or no frame comes."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex}.partial.mp4"
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    try:
        count = encode_video(frames, tmp, rate, WATCH_SETTINGS, str(target))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
