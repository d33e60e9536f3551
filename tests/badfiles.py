"""Bad (and tricky but readable) inputs made by the tests themselves, for the robustness tests.

Each ``make_*`` takes a folder and a name and returns the path it wrote (a file or a folder). Videos
come from ``videos.make_index_video``, so the frames of the readable ones encode their own index.

Unreadable: a zero-byte file; an MP4 cut in half (OpenCV writes the ``moov`` index at the end,
so the first half has none); a text file named ``.mp4``; an audio-only container
(``make_audio_only_avi``, see there); a folder where a file should be; a frame folder with fewer
frames than its list line says, or with a gap in its numbering; an MP4 whose video stream's codec is
unknown (``make_unknown_codec``).

Readable although they look bad: an AVI whose header overstates its frame count (the tail's frame
payloads are zeroed: the container claims 40 frames, 25 decode; ``tsn.io.probe`` corrects the
count), and videos 48 or 72 pixels wide (decord fails with "The size must exactly match", OpenCV
takes over).
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from videos import index_frame, make_bframe_index_video, make_index_video

WIDTH, HEIGHT = 64, 48
OVERSTATED_CLAIM, OVERSTATED_GOOD = 40, 25


def make_zero_byte(folder: Path, name: str = "empty.mp4") -> Path:
    """An empty file named like a video."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_cut_in_half(folder: Path, name: str = "half.mp4", num_frames: int = 30) -> Path:
    """The first half of the bytes of an MP4 (mp4v) index video: no ``moov`` box, nothing to index."""
    path = folder / name
    whole = make_index_video(folder / f".whole-{name}", num_frames, WIDTH, HEIGHT)
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_text_as_mp4(folder: Path, name: str = "notes.mp4") -> Path:
    """A plain text file with a video's name."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not a video\n" * 20)
    return path


def _chunk(tag: bytes, payload: bytes) -> bytes:
    """A RIFF chunk: tag, little-endian size, payload, a pad byte to an even length."""
    return tag + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def _list(kind: bytes, payload: bytes) -> bytes:
    return _chunk(b"LIST", kind + payload)


def make_audio_only_avi(folder: Path, name: str = "speech.avi", sample_rate: int = 8000,
                        seconds: float = 0.5) -> Path:
    """A valid AVI (RIFF) container holding one audio stream and no video stream.

    What it is: ``hdrl`` with the main header (``avih``: 1 stream, no size) and one stream list
    (``strh`` of type ``auds``, ``strf`` a 16-bit mono PCM ``WAVEFORMATEX``), a ``movi`` list of
    ``00wb`` audio chunks of 0.1 s (a 440 Hz tone), and an ``idx1`` index. FFmpeg (inside decord
    and OpenCV) parses it as an AVI and finds only audio; ``decord.AudioReader`` decodes its
    samples (the tests check that, so the file is known to be a well-formed container). Made by
    hand, so that the tests need no ffmpeg program.
    """
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    total = int(sample_rate * seconds)
    samples = (np.sin(2 * np.pi * 440 * np.arange(total) / sample_rate) * 8000).astype("<i2")
    block_align, byte_rate = 2, 2 * sample_rate
    per_chunk = sample_rate // 10
    chunks = [samples[start:start + per_chunk].tobytes() for start in range(0, total, per_chunk)]

    avih = struct.pack("<10I4I", 0, byte_rate, 0, 0x10, 0, 0, 1, per_chunk * block_align, 0, 0, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"auds", b"\0\0\0\0", 0, 0, 0, 0, block_align, byte_rate, 0,
                       total, per_chunk * block_align, 0xFFFFFFFF, block_align, 0, 0, 0, 0)
    strf = struct.pack("<HHIIHHH", 1, 1, sample_rate, byte_rate, block_align, 16, 0)
    hdrl = _list(b"hdrl", _chunk(b"avih", avih) + _list(b"strl", _chunk(b"strh", strh) + _chunk(b"strf", strf)))

    movi_payload, index = b"", b""
    for data in chunks:
        # idx1 offsets count from the 'movi' tag (4 bytes before the first chunk).
        index += struct.pack("<4sIII", b"00wb", 0x10, 4 + len(movi_payload), len(data))
        movi_payload += _chunk(b"00wb", data)
    body = b"AVI " + hdrl + _list(b"movi", movi_payload) + _chunk(b"idx1", index)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def make_unknown_codec(folder: Path, name: str = "nocodec.mp4", num_frames: int = 20) -> Path:
    """An H.264 MP4 whose sample entry ``avc1`` is overwritten with ``zzzz``: FFmpeg finds a video
    stream but no codec for it (as in a file damaged in its header)."""
    path = folder / name
    whole = make_bframe_index_video(folder / f".whole-{name}", num_frames, width=WIDTH, height=HEIGHT)
    data = whole.read_bytes()
    whole.unlink()
    assert data.count(b"avc1") >= 1
    path.write_bytes(data.replace(b"avc1", b"zzzz"))
    return path


def make_folder_for_file(folder: Path, name: str = "clip.mp4") -> Path:
    """An empty folder where a video file should be."""
    path = folder / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_frame_folder(folder: Path, num_frames: int, missing: tuple[int, ...] = (),
                      width: int = WIDTH, height: int = HEIGHT) -> Path:
    """A frame folder ``img_00001.jpg ...`` whose 0-based frame i encodes i, without the 1-based ``missing`` files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        if i + 1 not in missing:
            frame = cv2.cvtColor(index_frame(i, width, height), cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(folder / f"img_{i + 1:05d}.jpg"), frame)
    return folder


def movi_frame_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, payload size) of every ``00dc`` frame chunk of an AVI written by OpenCV, in order."""
    position = data.index(b"movi") + 4
    chunks = []
    while position + 8 <= len(data):
        tag, size = data[position:position + 4], struct.unpack("<I", data[position + 4:position + 8])[0]
        if tag == b"idx1":
            break
        if tag == b"LIST":  # a nested list header: its chunks follow
            position += 12
            continue
        if tag == b"00dc":
            chunks.append((position, size))
        position += 8 + size + (size & 1)
    return chunks


def make_overstated_avi(folder: Path, name: str = "overstated.avi") -> Path:
    """An MJPG AVI that claims ``OVERSTATED_CLAIM`` frames (header and index) of which only the
    first ``OVERSTATED_GOOD`` decode: the later frames' payloads are zeroed."""
    source = make_index_video(folder / f".source-{name}", OVERSTATED_CLAIM, WIDTH, HEIGHT, fourcc="MJPG")
    data = bytearray(source.read_bytes())
    source.unlink()
    chunks = movi_frame_chunks(bytes(data))
    if len(chunks) != OVERSTATED_CLAIM:
        raise RuntimeError(f"expected {OVERSTATED_CLAIM} frame chunks in the AVI OpenCV wrote, found {len(chunks)}")
    for offset, size in chunks[OVERSTATED_GOOD:]:
        data[offset + 8:offset + 8 + size] = bytes(size)
    path = folder / name
    path.write_bytes(bytes(data))
    return path


def make_narrow(folder: Path, width: int, num_frames: int = 30, name: str | None = None) -> Path:
    """An index video only ``width`` (48 or 72) pixels wide, 48 high: decord cannot read it, OpenCV can."""
    return make_index_video(folder / (name or f"narrow{width}.mp4"), num_frames, width, HEIGHT)


def make_good_videos(folder: Path, lengths: dict[str, int]) -> None:
    """Index videos ``folder/name`` of the given frame counts (distinct counts tell them apart by their frames)."""
    for name, length in lengths.items():
        make_index_video(folder / name, length, WIDTH, HEIGHT)


def write_list(path: Path, lines: list[str]) -> Path:
    """A list file with these lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path
