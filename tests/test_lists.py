"""Video and rawframe lists, class-name files and label checks."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from tsn.data.lists import (
    ListFormatError,
    VideoRecord,
    check_labels,
    read_class_names,
    read_list,
    read_rawframe_list,
    read_video_list,
    write_class_names,
    write_rawframe_list,
    write_video_list,
)


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_read_video_list_comments_blank_crlf_and_spaces(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.txt",
        "# a comment\n"
        "\n"
        "a/v1.mp4 0\r\n"
        "   \n"
        "  b/my clip  two.avi\t3  \n"
        "c/#hash.mp4 12\n"
        "    # indented comment\n"
        "d/x.mp4 1",  # no final newline
    )
    records = read_video_list(path)
    assert records == [
        VideoRecord("a/v1.mp4", 0),
        VideoRecord("b/my clip  two.avi", 3),
        VideoRecord("c/#hash.mp4", 12),
        VideoRecord("d/x.mp4", 1),
    ]
    assert [r.line for r in records] == [3, 5, 6, 8]
    assert all(r.num_frames is None for r in records)


def test_read_rawframe_list_with_spaces(tmp_path: Path) -> None:
    path = write(tmp_path / "raw.txt", "cls a/vid 1 300 2\nb/v2 45 0\n")
    assert read_rawframe_list(path) == [VideoRecord("cls a/vid 1", 2, 300), VideoRecord("b/v2", 0, 45)]


def test_utf8_bom_and_non_ascii_paths(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffcafé/vidéo.mp4 1\n".encode("utf-8"))
    assert read_video_list(path) == [VideoRecord("café/vidéo.mp4", 1)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("a/v.mp4", "missing label"),
        ("a/v.mp4 x", "label 'x' is not an integer"),
        ("a/v.mp4 1.0", "label '1.0' is not an integer"),
        ("a/v.mp4 -1", "label -1 is negative"),
        ("a/v.mp4 +1", "label '+1' is not an integer"),
        ("a/v.mp4 1_0", "label '1_0' is not an integer"),
    ],
)
def test_bad_video_lines_name_list_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path / "bad.txt", f"# header\nok/v.mp4 0\n{line}\nok/w.mp4 1\n")
    with pytest.raises(ListFormatError) as info:
        read_video_list(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert reason in str(info.value)
    assert info.value.line_no == 3 and info.value.list_path == str(path)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("a/v 1", "expected 'PATH NUM_FRAMES LABEL'"),
        ("a/v x 1", "frame count 'x' is not an integer"),
        ("a/v 0 1", "frame count 0 is less than 1"),
        ("a/v -5 1", "frame count -5 is negative"),
        ("a/v 12.5 1", "frame count '12.5' is not an integer"),
        ("a/v 10 -2", "label -2 is negative"),
        ("a/v 10 two", "label 'two' is not an integer"),
    ],
)
def test_bad_rawframe_lines(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path / "bad_raw.txt", f"ok/v 10 0\n\n{line}\n")
    with pytest.raises(ListFormatError) as info:
        read_rawframe_list(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert reason in str(info.value)


def test_non_utf8_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"a/v.mp4 0\nb/caf\xe9.mp4 1\n")
    with pytest.raises(ListFormatError, match=rf"^{re.escape(str(path))}:2: not UTF-8"):
        read_video_list(path)


def test_read_list_dispatch(tmp_path: Path) -> None:
    video = write(tmp_path / "v.txt", "a.mp4 1\n")
    raw = write(tmp_path / "r.txt", "a 5 1\n")
    assert read_list(video, "video") == [VideoRecord("a.mp4", 1)]
    assert read_list(raw, "rawframes") == [VideoRecord("a", 1, 5)]
    with pytest.raises(ValueError, match="list format must be one of"):
        read_list(video, "frames")


def test_empty_list_reads_as_empty(tmp_path: Path) -> None:
    assert read_video_list(write(tmp_path / "e.txt", "# nothing yet\n\n")) == []


def test_record_equality_ignores_line() -> None:
    assert VideoRecord("a.mp4", 1, None, 3) == VideoRecord("a.mp4", 1, None, 9)
    assert hash(VideoRecord("a.mp4", 1, None, 3)) == hash(VideoRecord("a.mp4", 1))
    assert VideoRecord("a.mp4", 1) != VideoRecord("a.mp4", 2)


def test_write_read_round_trip(tmp_path: Path) -> None:
    videos = [VideoRecord("a b/c d.mp4", 0), VideoRecord("x/y.avi", 17)]
    frames = [VideoRecord("a b/c d", 3, 120), VideoRecord("x/y", 0, 1)]
    write_video_list(videos, tmp_path / "out" / "v.txt")
    write_rawframe_list(frames, tmp_path / "out" / "r.txt")
    assert (tmp_path / "out" / "v.txt").read_text() == "a b/c d.mp4 0\nx/y.avi 17\n"
    assert (tmp_path / "out" / "r.txt").read_text() == "a b/c d 120 3\nx/y 1 0\n"
    assert read_video_list(tmp_path / "out" / "v.txt") == videos
    assert read_rawframe_list(tmp_path / "out" / "r.txt") == frames
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r.txt", "v.txt"]  # no temp files left


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (VideoRecord("#a.mp4", 0), "reads as a comment"),
        (VideoRecord("a.mp4 ", 0), "whitespace"),
        (VideoRecord("", 0), "empty"),
        (VideoRecord("a\nb.mp4", 0), "line break"),
        (VideoRecord("a.mp4", -1), "label must be an integer >= 0"),
    ],
)
def test_write_refuses_records_that_would_not_read_back(tmp_path: Path, record: VideoRecord, reason: str) -> None:
    target = write(tmp_path / "list.txt", "old.mp4 0\n")
    with pytest.raises(ValueError, match=reason):
        write_video_list([VideoRecord("fine.mp4", 1), record], target)
    assert target.read_text() == "old.mp4 0\n"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["list.txt"]


def test_write_rawframes_needs_frame_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_frames must be an integer >= 1, got None"):
        write_rawframe_list([VideoRecord("a", 0)], tmp_path / "r.txt")
    assert not (tmp_path / "r.txt").exists()


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    write_video_list([VideoRecord("a.mp4", 0)], tmp_path / "v.txt")
    assert stat.S_IMODE((tmp_path / "v.txt").stat().st_mode) == 0o666 & ~umask


def test_write_replaces_existing_file(tmp_path: Path) -> None:
    target = write(tmp_path / "list.txt", "old.mp4 0\nold2.mp4 1\n")
    write_video_list([VideoRecord("new.mp4", 2)], target)
    assert target.read_text() == "new.mp4 2\n"


def test_class_names(tmp_path: Path) -> None:
    text = "# classes\nabseiling\r\nair drumming\n\npassing American football (in game)\n"
    path = write(tmp_path / "classes.txt", text)
    assert read_class_names(path) == ["abseiling", "air drumming", "passing American football (in game)"]
    write_class_names(["b c", "a"], tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "b c\na\n"
    with pytest.raises(ValueError, match="appears twice"):
        write_class_names(["a", "a"], tmp_path / "dup.txt")


def test_class_names_errors(tmp_path: Path) -> None:
    dup = write(tmp_path / "dup.txt", "run\nwalk\n\nrun\n")
    with pytest.raises(ListFormatError, match=rf"^{re.escape(str(dup))}:4: class 'run' repeats line 1$"):
        read_class_names(dup)
    empty = write(tmp_path / "empty.txt", "\n# none\n")
    with pytest.raises(ListFormatError, match=rf"^{re.escape(str(empty))}: no class names$"):
        read_class_names(empty)


def test_check_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "val.txt", "a.mp4 0\n# c\nb.mp4 2\nc.mp4 5\nd.mp4 3\n")
    records = read_video_list(path)
    check_labels(records, 6, path)  # all inside 0..5
    with pytest.raises(ListFormatError) as info:
        check_labels(records, 3, path)
    assert str(info.value) == (
        f"{path}:4: label 5 of 'c.mp4' is outside the class list (3 classes, labels 0..2); "
        "1 more line(s) out of range"
    )
    with pytest.raises(ListFormatError, match=rf"^{re.escape(str(path))}: label 7 of 'x\.mp4'"):
        check_labels([VideoRecord("x.mp4", 7)], 3, path)  # built in code: no line to name
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        check_labels(records, 0, path)
