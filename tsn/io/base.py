"""What every reader backend shares: the probe result, the one error type, the frame-folder naming."""

from __future__ import annotations

from dataclasses import dataclass

# Frame folders as written by tools/extract_frames.py: 1-based names, so 0-based frame i is
# RAWFRAME_TEMPLATE.format(i + 1).
RAWFRAME_TEMPLATE = "img_{:05d}.jpg"


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` found: frame size, the number of frames that really decode, frame rate, backend.

    ``fps`` is 0.0 where it is unknown (a folder of frames has no frame rate). ``backend`` is the
    backend that produced the numbers ("decord", "opencv" or "rawframes"); ``read`` with
    ``backend="auto"`` uses it.
    """

    height: int
    width: int
    num_frames: int
    fps: float
    backend: str


class VideoReadError(RuntimeError):
    """A video (file or frame folder) that cannot be read as asked; str() is ``"{path}: {reason}"``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuild from (path, reason), not from the formatted message, when sent between processes.
        return (type(self), (self.path, self.reason))
