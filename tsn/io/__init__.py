"""Video readers: one interface over PyAV, decord, OpenCV and folders of JPEG frames.

- ``probe(path, backend="auto") -> VideoInfo(height, width, num_frames, fps, backend)``, where
  ``num_frames`` counts the frames that really decode (each backend's ``probe`` says how it checks,
  and at what cost);
- ``read(path, indices, backend="auto", info=None)`` -> uint8 ``(T, H, W, 3)`` RGB, exactly the
  requested 0-based frames in the requested order;
- ``read_first(path, choose, backend="auto")`` -> ``probe`` and ``read`` in one pass (the Dataset's
  first read of a video: with PyAV the frame count is verified in the same decode);
- ``iter_frames(path, backend="auto")`` -> every frame in order (for frame extraction);
- ``read_flow(folder, indices)`` -> uint8 ``(T, H, W, 2)`` quantised (x, y) optical flow from a flow folder
  (``x_00001.jpg``/``y_00001.jpg``, or TSN's ``flow_x_``/``flow_y_``), ``count_flow_frames(folder)``;
- ``VideoReadError(path, reason)`` for anything that cannot be read, ``str()`` = ``"path: reason"``;
- ``VIDEO_EXTENSIONS``: the file endings taken for videos where a folder is searched for them.

Backends: ``BACKENDS`` = pyav, decord, opencv, torchcodec, rawframes (a folder ``img_00001.jpg ...``,
``RAWFRAME_TEMPLATE``); ``BACKEND_CHOICES`` = what a user names (``--backend``, ``data.backend``): "auto" and the
backends of video files. ``"auto"`` reads a folder as frames and a file with PyAV, falling back to
OpenCV (a warning once per file on the logger ``"tsn.io"``; INFO for the packed B-frames PyAV cannot decode,
once per process, DEBUG after). No reader object outlives a call (decord
readers leak memory when kept, decord issues 157 and 208). Frames are in the coded orientation
(OpenCV's automatic rotation is off), the same for every backend.
"""

from tsn.io.base import FLOW_TEMPLATES, RAWFRAME_TEMPLATE, VIDEO_EXTENSIONS, FrameIndex, VideoInfo, VideoReadError
from tsn.io.rawframes import count_flow_frames, read_flow
from tsn.io.reader import BACKEND_CHOICES, BACKENDS, iter_frames, probe, read, read_first

__all__ = ["BACKENDS", "BACKEND_CHOICES", "FLOW_TEMPLATES", "RAWFRAME_TEMPLATE", "VIDEO_EXTENSIONS", "FrameIndex",
           "VideoInfo", "VideoReadError", "count_flow_frames", "iter_frames", "probe", "read",
           "read_first", "read_flow"]
