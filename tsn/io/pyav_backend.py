"""PyAV backend (FFmpeg through the ``av`` package): frames found by their timestamps, non-reference frames skipped.

Index (``build_index``): one demux pass without decoding gives every video packet's timestamp,
keyframe and discard flags. It is built once, by ``probe``, and kept in the ``VideoInfo``: reads
given that info do not index the file again. Frame ``i`` is the packet with the ``i``-th smallest
timestamp among those the container does not mark to be discarded (the display order: what a player
shows and ``ffmpeg -fps_mode passthrough`` decodes; the packets before an MP4 edit list's start are
decoded when needed, never numbered). A stream whose packets lack timestamps or repeat one is
refused (``"auto"`` then reads it with OpenCV, whose sequential decode counts the same frames).

Decode plan (``read_sorted``): for sorted frames, seek to the keyframe before the next wanted frame
only when that keyframe has not been fed to the decoder yet (everything between is skipped), and
otherwise decode on. Every decoded frame is identified by its timestamp, so a frame is exact by
construction, never "the frame a seek happened to land on". For H.264 and HEVC, packets of frames
that are not wanted are decoded with ``skip_frame = NONREF``: FFmpeg's decoder then drops the frames
no other frame refers to (non-reference B frames) without decoding them, and the frames it does
decode are the same. Once the last wanted frame a run reaches has been fed, the decoder is drained
instead of fed further packets: it holds frames back to reorder them, and pushing them out with more
packets would decode reference frames nobody asked for. Frames must leave the decoder in increasing
timestamp order; a stream where they do not (MPEG-4 part 2 with packed B-frames) is refused rather
than guessed at.

Only wanted frames are converted to RGB (swscale, bilinear when scaling to ``size``); decord decodes
every frame on the way and converts each (the README's loader benchmarks compare the two).

Threads: one decoding thread per reader (skipping per packet needs frames decoded in the order
they are sent); the Dataset decodes several clips at once instead.

Frames come in the coded orientation, as with the other backends (no rotation by the display matrix).
"""

from __future__ import annotations

from typing import Iterator

import av
import numpy as np

from tsn.io.base import FrameIndex, VideoInfo, VideoReadError

NAME = "pyav"
# Codecs whose unwanted non-reference frames are skipped. Elsewhere every frame is decoded: MPEG-4
# part 2 in AVI often packs B-frames into the packet before them, and its decoder then labels
# frames with the wrong timestamps when some are skipped (an Xvid clip here).
_SKIPS_NONREF = frozenset({"h264", "hevc"})


class PackedBFrames(VideoReadError):
    """A stream whose decoder gives frames out of timestamp order (MPEG-4 part 2 with packed B-frames, as in
    Xvid AVI files): PyAV refuses it by design, and ``"auto"`` reads it with OpenCV."""


def _reason(error: BaseException) -> str:
    """PyAV's exception -> one short line, without the file name PyAV appends."""
    text = getattr(error, "strerror", None) or str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def build_index(container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str) -> FrameIndex:
    """One demux pass (no decoding) -> the ``FrameIndex`` of ``stream``: the shown frames' timestamps, the keyframes'.

    Packets the container marks to be discarded (``is_discard``: those before the start of an MP4
    edit list, as in clips cut by ``ffmpeg -ss T -c copy``) are decoded when a frame needs them
    but never shown, so they get no frame number; their keyframes are still where seeks start.
    """
    shown, keys = [], []
    open_gop = False  # a packet after a keyframe (decoding order) shown before it
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the end-of-stream marker
            if packet.pts is None:
                raise VideoReadError(path, f"{NAME}: video packets without timestamps (frames cannot be told apart)")
            open_gop = open_gop or bool(keys and packet.pts < keys[-1])
            if packet.is_keyframe:
                keys.append(packet.pts)
            if not packet.is_discard:
                shown.append(packet.pts)
    except av.FFmpegError as error:
        raise VideoReadError(path, f"{NAME}: demuxing fails after {len(shown)} packets: {_reason(error)}") from None
    if not shown:
        raise VideoReadError(path, f"{NAME}: no video frames")
    stamps = np.sort(np.asarray(shown, dtype=np.int64))  # (n,) display order
    if (np.diff(stamps) <= 0).any():
        raise VideoReadError(path, f"{NAME}: two video packets share a timestamp")
    if not keys or min(keys) > stamps[0]:
        raise VideoReadError(path, f"{NAME}: no keyframe at or before the first frame")
    return FrameIndex.of(stamps, np.asarray(keys, dtype=np.int64), float(stream.time_base or 0), open_gop)


class _Video:
    """An open container, its video stream and the stream's ``FrameIndex`` (built here unless given).

    ``pts``: int64 (n,), frame ``i``'s timestamp; ``key_pts``: int64 (K,), the keyframes' timestamps.
    Close with ``close()``; nothing outlives a call of this module's functions.
    """

    def __init__(self, path: str, index: FrameIndex | None = None) -> None:
        self.path = path
        try:
            self.container = av.open(path)
        except (av.FFmpegError, OSError, UnicodeDecodeError):
            # FFmpeg's reason ("Invalid data found when processing input") says no more than this.
            raise VideoReadError(path, f"{NAME}: cannot open it (not a video, or a damaged container)") from None
        try:
            if not self.container.streams.video:
                raise VideoReadError(path, f"{NAME}: no video stream")
            self.stream = self.container.streams.video[0]
            if self.stream.codec_context is None:
                raise VideoReadError(path, f"{NAME}: the video stream has no codec FFmpeg knows (a damaged header?)")
            self.codec = self.stream.codec_context
            self.codec.thread_type = "NONE"
            self.codec.thread_count = 1
            self.index = index if index is not None else build_index(self.container, self.stream, path)
            self.pts = self.index.stamps()
            self.key_pts = self.index.keyframes
        except BaseException:
            self.container.close()
            raise

    def info(self) -> VideoInfo:
        """Size from the stream's header, the index's frame count (not verified here), fps, the index."""
        rate = self.stream.average_rate or self.stream.guessed_rate
        fps = float(rate) if rate else 0.0
        height, width = int(self.codec.height), int(self.codec.width)
        if height < 1 or width < 1:
            raise VideoReadError(self.path, f"{NAME}: the stream declares no frame size")
        return VideoInfo(height=height, width=width, num_frames=int(self.pts.size),
                         fps=fps if np.isfinite(fps) and fps > 0 else 0.0, backend=NAME, index=self.index)

    def _keyframe_before(self, stamp: int) -> int:
        """The timestamp of the last keyframe at or before timestamp ``stamp``."""
        return int(self.key_pts[np.searchsorted(self.key_pts, stamp, side="right") - 1])

    def seek_start(self) -> None:
        """Back to the first keyframe (indexing read the whole file)."""
        self._seek(int(self.key_pts[0]))

    def _seek(self, key_pts: int) -> None:
        """Position the demuxer at or before the keyframe at timestamp ``key_pts`` and empty the decoder."""
        try:
            self.container.seek(key_pts, stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError as error:
            raise VideoReadError(self.path, f"{NAME}: cannot seek to timestamp {key_pts}: {_reason(error)}") from None
        self.codec.flush_buffers()

    def packets_from(self, key_pts: int) -> Iterator[av.Packet]:
        """The video packets in decoding order from the keyframe at timestamp ``key_pts`` on (the decoder emptied),
        the empty end-of-stream packet last.

        FFmpeg's MP4 demuxer lands a whole GOP early in files whose edit list cuts the start (``ffmpeg -ss T
        -c copy``): the packets before the keyframe asked for are read past, not decoded.
        """
        self._seek(key_pts)
        packets = self.container.demux(self.stream)
        for packet in packets:
            if not packet.size or packet.pts == key_pts:
                yield packet
                break
        yield from packets

    def decode(self, frames: np.ndarray, height: int, width: int, size: tuple[int, int] | None) -> np.ndarray:
        """Sorted, unique, in-range ``frames`` -> uint8 (T, h, w, 3) RGB at ``size`` (None: height x width)."""
        out_height, out_width = size if size is not None else (height, width)
        out = np.empty((len(frames), out_height, out_width, 3), dtype=np.uint8)
        slot_of = {int(self.pts[frame]): slot for slot, frame in enumerate(frames)}
        filled = np.zeros(len(frames), dtype=bool)
        unfed = sorted(slot_of)  # wanted timestamps whose packets the decoder has not had yet
        skipping = self.codec.name in _SKIPS_NONREF
        shown: int | None = None  # timestamp of the last frame out of the decoder since the seek

        def take(decoded_frames: Iterator[av.VideoFrame]) -> None:
            """Check the decoder's frames come in timestamp order; convert the wanted ones into ``out``."""
            nonlocal shown
            for decoded in decoded_frames:
                if decoded.pts is None or (shown is not None and decoded.pts <= shown):
                    raise PackedBFrames(self.path, f"{NAME}: the decoder gives frames out of timestamp order "
                                                   f"(packed B-frames?): frames cannot be told apart by their "
                                                   f"timestamps")
                shown = decoded.pts
                slot = slot_of.get(decoded.pts)
                if slot is None or filled[slot]:
                    continue
                if (decoded.height, decoded.width) != (height, width):
                    raise VideoReadError(self.path, f"{NAME}: frame {int(frames[slot])} is {decoded.width}x"
                                                    f"{decoded.height}, the stream declares {width}x{height}")
                out[slot] = decoded.to_ndarray(format="rgb24", width=out_width, height=out_height, threads=1)
                filled[slot] = True

        try:
            while unfed:
                fed = self._keyframe_before(unfed[0])  # highest timestamp fed since the seek
                shown = None
                for packet in self.packets_from(fed):
                    if not packet.size:
                        unfed.clear()  # the end of the stream: what did not come out is reported below
                        break
                    stamp = int(packet.pts)
                    fed = max(fed, stamp)
                    if stamp in unfed:
                        unfed.remove(stamp)
                    if skipping:
                        self.codec.skip_frame = "DEFAULT" if stamp in slot_of else "NONREF"
                    take(self.codec.decode(packet))
                    # Every wanted frame this run reaches is fed (the next lies behind a keyframe not fed
                    # yet): drain the frames the decoder holds back rather than decode more to push them out.
                    if not unfed or self._keyframe_before(unfed[0]) > fed:
                        break
                else:
                    unfed.clear()
                take(self.codec.decode(None))
        except av.FFmpegError as error:
            raise VideoReadError(self.path, f"{NAME}: frames {_span(frames)} do not decode: "
                                            f"{_reason(error)}") from None
        if not filled.all():
            missing = frames[~filled]
            raise VideoReadError(self.path, f"{NAME}: frame {int(missing[0])} does not decode"
                                            + (f" ({missing.size} frames missing)" if missing.size > 1 else ""))
        return out

    def close(self) -> None:
        self.container.close()


def _span(frames: np.ndarray) -> str:
    if len(frames) <= 4:
        return ", ".join(str(int(i)) for i in frames)
    return f"{int(frames[0])}..{int(frames[-1])} ({len(frames)} frames)"


def claimed_info(path: str) -> VideoInfo:
    """``probe`` without decoding its last frame: the caller must (``tsn.io.reader.read_first`` does)."""
    video = _Video(path)
    try:
        return video.info()
    finally:
        video.close()


def probe(path: str) -> VideoInfo:
    """Size, verified frame count and fps of a video file, by PyAV.

    The count is the number of video packets (one demux pass); it is verified by decoding the
    last frame (a seek to its keyframe and at most one GOP, non-reference frames skipped). A last
    frame that does not decode (a damaged or cut tail) refuses the file: ``"auto"`` hands it to
    OpenCV, whose sequential count is exact.
    """
    video = _Video(path)
    try:
        info = video.info()
        last = np.array([info.num_frames - 1])
        try:
            video.decode(last, info.height, info.width, None)
        except VideoReadError as error:
            # The decoder's own words only: "pyav: frames 39 do not decode: <FFmpeg's reason>" -> its reason.
            cause = error.reason.removeprefix(f"{NAME}: ").partition(" do not decode: ")[2] or \
                error.reason.removeprefix(f"{NAME}: ")
            # type(error): a PackedBFrames stays one, so that "auto" can tell it from damage.
            raise type(error)(path, f"{NAME}: frame {int(last[0])}, the last of the {info.num_frames} "
                                    f"packets, does not decode: {cause}") from None
    finally:
        video.close()
    return info


def read_sorted(path: str, indices: np.ndarray, info: VideoInfo, size: tuple[int, int] | None = None,
                threads: int = 1) -> np.ndarray:
    """Frames at sorted, unique, in-range ``indices`` -> uint8 (T, H, W, 3) RGB, scaled to ``size`` if given.

    ``threads`` is accepted for the common interface; decoding uses one thread (module docstring).
    """
    del threads
    video = _Video(path, info.index)
    try:
        if video.pts.size != info.num_frames:
            raise VideoReadError(path, f"{NAME}: {video.pts.size} packets, probe said {info.num_frames}")
        return video.decode(indices, info.height, info.width, size)
    finally:
        video.close()


def iter_frames(path: str, info: VideoInfo) -> Iterator[np.ndarray]:
    """Frames 0 .. info.num_frames - 1 in order, uint8 (H, W, 3) RGB, by one sequential decode."""
    video = _Video(path, info.index)
    try:
        video.seek_start()
        expected = 0
        try:
            for decoded in video.container.decode(video.stream):
                if expected == info.num_frames:
                    break
                if decoded.pts != video.pts[expected]:
                    raise VideoReadError(path, f"{NAME}: frame {expected} does not decode (got timestamp "
                                               f"{decoded.pts} instead)")
                yield decoded.to_ndarray(format="rgb24", threads=1)
                expected += 1
        except av.FFmpegError as error:
            raise VideoReadError(path, f"{NAME}: frame {expected} does not decode: {_reason(error)}") from None
        if expected < info.num_frames:
            raise VideoReadError(path, f"{NAME}: decoding stops after {expected} of {info.num_frames} frames")
    finally:
        video.close()
