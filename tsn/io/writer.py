"""Writing videos with PyAV's bundled encoders (no system FFmpeg): ``write_video``.

The file appears complete or not at all: frames are encoded into a hidden temporary file beside
the target, renamed into place once the encoder is flushed and the container closed.
"""

from __future__ import annotations

import os
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float | Fraction,
                crf: int = 23, codec: str = "libx264") -> int:
    """Encode RGB uint8 frames ``(H, W, 3)`` (all of one size) into ``path`` at ``fps``; returns the frame count.

    H.264 in yuv420p needs even sides: an odd last row or column is dropped. The container follows
    the suffix (``.mp4``, ``.mkv``, ...). Nothing is left at ``path`` when encoding fails or no frame comes.
    """
    import av

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex}.partial{target.suffix}"
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    count = 0
    try:
        with av.open(str(tmp), "w") as container:
            stream = None
            for frame in frames:
                height, width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
                if stream is None:
                    stream = container.add_stream(codec, rate=rate)
                    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                    stream.options = {"crf": str(crf)}
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width]), format="rgb24")
                container.mux(stream.encode(picture))
                count += 1
            if stream is None:
                raise ValueError(f"{target}: no frames to write")
            container.mux(stream.encode(None))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
