"""List builders on tiny official-format annotation files written by the tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tsn.data.builders import (
    DatasetLists,
    folder_lists,
    hmdb51_lists,
    keep_existing,
    kinetics_filename,
    kinetics_lists,
    sthv2_lists,
    ucf101_lists,
    write_dataset_lists,
)
from tsn.data.lists import ListFormatError, VideoRecord, read_class_names, read_video_list

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def raises_at(path: Path, line: int | None, reason: str):
    where = re.escape(str(path)) + ("" if line is None else f":{line}")
    return pytest.raises(ListFormatError, match=f"^{where}: .*{re.escape(reason)}")


# ----------------------------------------------------------------------------- UCF101


def ucf101_annotations(folder: Path) -> Path:
    # official files use CRLF line ends, 1-based classInd, labels only in the train lists
    write(folder / "classInd.txt", "1 ApplyEyeMakeup\r\n2 Archery\r\n3 YoYo\r\n")
    write(
        folder / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "YoYo/v_YoYo_g08_c02.avi 3\r\n"
        "Archery/v_Archery_g09_c01.avi 2\r\n",
    )
    write(folder / "testlist01.txt", "Archery/v_Archery_g01_c01.avi\r\nYoYo/v_YoYo_g01_c01.avi\r\n")
    for split in (2, 3):
        write(folder / f"trainlist{split:02d}.txt", f"YoYo/v_YoYo_g0{split}_c01.avi 3\n")
        write(folder / f"testlist{split:02d}.txt", f"ApplyEyeMakeup/v_ApplyEyeMakeup_g0{split}_c01.avi\n")
    return folder


def test_ucf101_split1(tmp_path: Path) -> None:
    lists = ucf101_lists(ucf101_annotations(tmp_path / "ucfTrainTestlist"), splits=(1,))
    assert lists.class_names == ["ApplyEyeMakeup", "Archery", "YoYo"]
    assert lists.splits == {
        "train_split1": [
            VideoRecord("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
            VideoRecord("YoYo/v_YoYo_g08_c02.avi", 2),
            VideoRecord("Archery/v_Archery_g09_c01.avi", 1),
        ],
        "test_split1": [VideoRecord("Archery/v_Archery_g01_c01.avi", 1), VideoRecord("YoYo/v_YoYo_g01_c01.avi", 2)],
    }
    assert lists.missing == {}


def test_ucf101_all_splits(tmp_path: Path) -> None:
    lists = ucf101_lists(ucf101_annotations(tmp_path))
    assert list(lists.splits) == [
        "train_split1", "test_split1", "train_split2", "test_split2", "train_split3", "test_split3"
    ]
    assert lists.splits["train_split3"] == [VideoRecord("YoYo/v_YoYo_g03_c01.avi", 2)]
    assert lists.splits["test_split2"] == [VideoRecord("ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi", 0)]


def test_ucf101_errors_name_the_line(tmp_path: Path) -> None:
    folder = ucf101_annotations(tmp_path)
    bad = write(folder / "trainlist01.txt", "YoYo/v_YoYo_g08_c02.avi 3\nArchery/v_Archery_g09_c01.avi 3\n")
    with raises_at(bad, 2, "label '3' disagrees with class folder 'Archery' (index 2)"):
        ucf101_lists(folder, (1,))
    bad = write(folder / "trainlist01.txt", "\nJuggling/v_Juggling_g01_c01.avi 1\n")
    with raises_at(bad, 2, "class folder 'Juggling'"):
        ucf101_lists(folder, (1,))
    bad = write(folder / "trainlist01.txt", "v_YoYo_g01_c01.avi 3\n")
    with raises_at(bad, 1, "has no class folder"):
        ucf101_lists(folder, (1,))
    write(folder / "trainlist01.txt", "YoYo/v_YoYo_g01_c01.avi 3\n")
    bad = write(folder / "classInd.txt", "1 ApplyEyeMakeup\n2\n")
    with raises_at(bad, 2, "expected 'INDEX CLASSNAME'"):
        ucf101_lists(folder, (1,))
    bad = write(folder / "classInd.txt", "1 ApplyEyeMakeup\n3 YoYo\n")
    with raises_at(bad, None, "indices must run 1..2 without gaps"):
        ucf101_lists(folder, (1,))
    with pytest.raises(ValueError, match="UCF101 split must be one of"):
        ucf101_lists(folder, (4,))


# ----------------------------------------------------------------------------- HMDB51


def hmdb51_annotations(folder: Path) -> Path:
    # the official lines end with a space; mark 1 train, 2 test, 0 unused
    write(folder / "wave_test_split1.txt", "w1.avi 1 \nw2.avi 2 \nw3.avi 0 \nw4.avi 1 \n")
    write(folder / "brush_hair_test_split1.txt", "b1.avi 2 \nb2.avi 1 \n")
    write(folder / "wave_test_split2.txt", "w1.avi 2 \nw2.avi 1 \n")
    write(folder / "brush_hair_test_split2.txt", "b1.avi 1 \nb2.avi 0 \n")
    return folder


def test_hmdb51_split1(tmp_path: Path) -> None:
    lists = hmdb51_lists(hmdb51_annotations(tmp_path), splits=(1,))
    assert lists.class_names == ["brush_hair", "wave"]  # sorted
    assert lists.splits == {
        "train_split1": [
            VideoRecord("brush_hair/b2.avi", 0), VideoRecord("wave/w1.avi", 1), VideoRecord("wave/w4.avi", 1)
        ],
        "test_split1": [VideoRecord("brush_hair/b1.avi", 0), VideoRecord("wave/w2.avi", 1)],
    }


def test_hmdb51_two_splits(tmp_path: Path) -> None:
    lists = hmdb51_lists(hmdb51_annotations(tmp_path), splits=(1, 2))
    assert lists.splits["train_split2"] == [VideoRecord("brush_hair/b1.avi", 0), VideoRecord("wave/w2.avi", 1)]
    assert lists.splits["test_split2"] == [VideoRecord("wave/w1.avi", 1)]


def test_hmdb51_errors(tmp_path: Path) -> None:
    folder = hmdb51_annotations(tmp_path)
    bad = write(folder / "wave_test_split1.txt", "w1.avi 1 \nw2.avi 3 \n")
    with raises_at(bad, 2, "expected 'VIDEO.avi 0|1|2'"):
        hmdb51_lists(folder, (1,))
    write(folder / "wave_test_split1.txt", "w1.avi 1\n")
    (folder / "wave_test_split2.txt").unlink()
    with pytest.raises(FileNotFoundError, match="wave_test_split2.txt: missing"):
        hmdb51_lists(folder, (1, 2))
    with pytest.raises(FileNotFoundError, match="no '\\*_test_split3.txt' files"):
        hmdb51_lists(folder, (3,))


# ----------------------------------------------------------------------------- Kinetics

KINETICS_TRAIN = (
    "label,youtube_id,time_start,time_end,split,is_cc\n"
    "abseiling,--07WQ2iBlw,1,11,train,0\n"
    'passing American football (in game),1e100000000,14,24,train,0\n'
    "air drumming,NaN00000000,5.0,15.0,train,1\n"
)
KINETICS_VAL = "label,youtube_id,time_start,time_end,split\nabseiling,0wR5jVB-WPk,417,427,val\n"


def test_kinetics_file_name_convention() -> None:
    assert kinetics_filename("--07WQ2iBlw", 1, 11) == "--07WQ2iBlw_000001_000011.mp4"


def test_kinetics_default_crawler_layout(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", KINETICS_TRAIN)
    val = write(tmp_path / "validate.csv", KINETICS_VAL)
    lists = kinetics_lists([train, val])
    assert lists.class_names == ["abseiling", "air drumming", "passing American football (in game)"]
    assert lists.splits == {
        "train": [
            VideoRecord("train/abseiling/--07WQ2iBlw_000001_000011.mp4", 0),
            # ids stay text: neither 1e100000000 nor NaN... becomes a number
            VideoRecord("train/passing American football (in game)/1e100000000_000014_000024.mp4", 2),
            VideoRecord("train/air drumming/NaN00000000_000005_000015.mp4", 1),
        ],
        "val": [VideoRecord("val/abseiling/0wR5jVB-WPk_000417_000427.mp4", 0)],
    }
    assert [r.line for r in lists.splits["train"]] == [2, 3, 4]


def test_kinetics_underscores_split_dirs_and_class_list(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", KINETICS_TRAIN)
    classes = ["abseiling", "air drumming", "zumba", "passing American football (in game)"]
    lists = kinetics_lists([train], class_names=classes, underscores=True, split_dirs={"train": "videos_train"})
    assert lists.class_names == classes
    assert [(r.path, r.label) for r in lists.splits["train"]] == [
        ("videos_train/abseiling/--07WQ2iBlw_000001_000011.mp4", 0),
        ("videos_train/passing_American_football_(in_game)/1e100000000_000014_000024.mp4", 3),
        ("videos_train/air_drumming/NaN00000000_000005_000015.mp4", 1),
    ]


def test_kinetics_csv_with_bom(tmp_path: Path) -> None:
    val = tmp_path / "val.csv"
    val.write_bytes(b"\xef\xbb\xbf" + KINETICS_VAL.encode())
    assert kinetics_lists([val]).splits == {"val": [VideoRecord("val/abseiling/0wR5jVB-WPk_000417_000427.mp4", 0)]}


def test_kinetics_flat_layout(tmp_path: Path) -> None:
    val = write(tmp_path / "val.csv", KINETICS_VAL)
    lists = kinetics_lists([val], class_folders=False, split_dirs={"val": ""}, ext=".mkv")
    assert lists.splits == {"val": [VideoRecord("0wR5jVB-WPk_000417_000427.mkv", 0)]}


HEADER = "label,youtube_id,time_start,time_end,split\n"


def test_kinetics_errors(tmp_path: Path) -> None:
    test_csv = write(tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nabc,1,11,test\n")
    with raises_at(test_csv, 1, "missing column(s) ['label']"):
        kinetics_lists([test_csv])
    bad = write(tmp_path / "bad.csv", HEADER + "run,a,1,11,train\nrun,b,x,11,train\n")
    with raises_at(bad, 3, "time_start 'x' is not a number"):
        kinetics_lists([bad])
    unknown = write(tmp_path / "unknown.csv", HEADER + "run,a,1,11,val\nfly,b,1,11,val\n")
    with raises_at(unknown, 3, "label 'fly' is not in the class list"):
        kinetics_lists([unknown], class_names=["run"])
    ragged = write(tmp_path / "ragged.csv", HEADER + "run,a,1,11,val\nrun,b,1,11,val,x,y\n")
    with raises_at(ragged, None, "not a readable CSV file"):
        kinetics_lists([ragged])
    empty = write(tmp_path / "empty.csv", HEADER + ",a,1,11,test\n")
    with raises_at(empty, 2, "empty label"):
        kinetics_lists([empty])


def test_keep_existing_reports_missing(tmp_path: Path) -> None:
    train = write(tmp_path / "ann" / "train.csv", KINETICS_TRAIN)
    root = tmp_path / "videos"
    write(root / "train/abseiling/--07WQ2iBlw_000001_000011.mp4", "")
    write(root / "train/air drumming/NaN00000000_000005_000015.mp4", "")
    lists = keep_existing(kinetics_lists([train]), root)
    assert lists.splits == {
        "train": [
            VideoRecord("train/abseiling/--07WQ2iBlw_000001_000011.mp4", 0),
            VideoRecord("train/air drumming/NaN00000000_000005_000015.mp4", 1),
        ]
    }
    assert lists.missing == {"train": ["train/passing American football (in game)/1e100000000_000014_000024.mp4"]}
    written = write_dataset_lists(lists, tmp_path / "out")
    assert [p.name for p in written] == ["classes.txt", "train.txt", "train_missing.txt"]
    assert (tmp_path / "out" / "train_missing.txt").read_text() == (
        "train/passing American football (in game)/1e100000000_000014_000024.mp4\n"
    )


# ----------------------------------------------------------------------------- Something-Something v2


def test_sthv2(tmp_path: Path) -> None:
    labels = {"Putting something into something": "1", "Approaching something with your camera": "0"}
    write(tmp_path / "something-something-v2-labels.json", json.dumps(labels))
    train = [
        {"id": "78687", "label": "putting a pen into a cup", "template": "Putting [something] into [something]",
         "placeholders": ["a pen", "a cup"]},
        {"id": "42326", "label": "approaching a door with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["a door"]},
    ]
    val = [{"id": "74225", "label": "x", "template": "Approaching [something] with your camera", "placeholders": ["x"]}]
    write(tmp_path / "something-something-v2-train.json", json.dumps(train))
    write(tmp_path / "something-something-v2-validation.json", json.dumps(val))
    lists = sthv2_lists(tmp_path)
    assert lists.class_names == ["Approaching something with your camera", "Putting something into something"]
    assert lists.splits == {
        "train": [VideoRecord("78687.webm", 1), VideoRecord("42326.webm", 0)],
        "val": [VideoRecord("74225.webm", 0)],
    }
    val.append({"id": "1", "template": "Dropping [something]"})
    bad = write(tmp_path / "something-something-v2-validation.json", json.dumps(val))
    with raises_at(bad, None, "item 1 (id 1): template 'Dropping something' is not in"):
        sthv2_lists(tmp_path)
    bad = write(tmp_path / "something-something-v2-validation.json", "[\n{\"id\": 1,\n")
    with pytest.raises(ListFormatError, match="invalid JSON"):
        sthv2_lists(tmp_path)


# ----------------------------------------------------------------------------- folder per class


def test_folder_tree(tmp_path: Path) -> None:
    root = tmp_path / "my videos"
    for name in ("walk/b.mp4", "walk/a.AVI", "walk/sub/c.mkv", "walk/notes.txt", "run/x.webm", ".hidden/y.mp4",
                 "walk/.z.mp4", "loose.mp4", "jump/readme.md"):
        write(root / name, "")
    lists = folder_lists(root)
    assert lists.class_names == ["jump", "run", "walk"]
    assert lists.splits == {
        "all": [
            VideoRecord("run/x.webm", 1),
            VideoRecord("walk/a.AVI", 2),
            VideoRecord("walk/b.mp4", 2),
            VideoRecord("walk/sub/c.mkv", 2),
        ]
    }


def test_folder_tree_with_split_folders(tmp_path: Path) -> None:
    for name in ("train/run/1.mp4", "train/walk/2.mp4", "val/walk/3.mp4", "val/swim/4.mp4"):
        write(tmp_path / name, "")
    lists = folder_lists(tmp_path, splits=("train", "val"))
    assert lists.class_names == ["run", "swim", "walk"]
    assert lists.splits == {
        "train": [VideoRecord("train/run/1.mp4", 0), VideoRecord("train/walk/2.mp4", 2)],
        "val": [VideoRecord("val/swim/4.mp4", 1), VideoRecord("val/walk/3.mp4", 2)],
    }
    with pytest.raises(FileNotFoundError, match="split folder 'test' not found"):
        folder_lists(tmp_path, splits=("test",))


# ----------------------------------------------------------------------------- writing and the CLI


def test_write_dataset_lists(tmp_path: Path) -> None:
    lists = DatasetLists(["a", "b c"], {"train": [VideoRecord("b c/1.mp4", 1)], "val": []})
    written = write_dataset_lists(lists, tmp_path / "out")
    assert written == [tmp_path / "out" / n for n in ("classes.txt", "train.txt", "val.txt")]
    assert (tmp_path / "out" / "classes.txt").read_text() == "a\nb c\n"
    assert (tmp_path / "out" / "train.txt").read_text() == "b c/1.mp4 1\n"
    assert (tmp_path / "out" / "val.txt").read_text() == ""


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_lists.py"), *args], capture_output=True, text=True, check=False
    )


def test_cli_ucf101(tmp_path: Path) -> None:
    src = ucf101_annotations(tmp_path / "ann")
    result = run_tool("--dataset", "ucf101", "--src", str(src), "--out", str(tmp_path / "out"), "--split", "1")
    assert result.returncode == 0, result.stderr
    assert read_class_names(tmp_path / "out" / "classes.txt") == ["ApplyEyeMakeup", "Archery", "YoYo"]
    assert read_video_list(tmp_path / "out" / "test_split1.txt") == [
        VideoRecord("Archery/v_Archery_g01_c01.avi", 1),
        VideoRecord("YoYo/v_YoYo_g01_c01.avi", 2),
    ]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["classes.txt", "test_split1.txt", "train_split1.txt"]
    assert "train_split1: 3 videos" in result.stdout


def test_cli_kinetics_only_existing(tmp_path: Path) -> None:
    csv = write(tmp_path / "train.csv", KINETICS_TRAIN)
    write(tmp_path / "videos/train/abseiling/--07WQ2iBlw_000001_000011.mp4", "")
    result = run_tool("--dataset", "kinetics", "--src", str(csv), "--out", str(tmp_path / "out"),
                      "--videos", str(tmp_path / "videos"), "--only-existing")
    assert result.returncode == 0, result.stderr
    assert "train: 1 videos (2 missing, dropped)" in result.stdout
    assert (tmp_path / "out" / "train.txt").read_text() == "train/abseiling/--07WQ2iBlw_000001_000011.mp4 0\n"
    assert len((tmp_path / "out" / "train_missing.txt").read_text().splitlines()) == 2


def test_cli_flag_for_another_dataset_is_refused(tmp_path: Path) -> None:
    result = run_tool("--dataset", "ucf101", "--src", str(tmp_path), "--out", str(tmp_path / "o"), "--flat")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "build_lists.py: error: --flat applies to --dataset kinetics only"


def test_cli_bad_line_exits_2_with_one_line(tmp_path: Path) -> None:
    src = hmdb51_annotations(tmp_path / "ann")
    bad = write(src / "wave_test_split1.txt", "w1.avi 1\nw2.avi x\n")
    result = run_tool("--dataset", "hmdb51", "--src", str(src), "--out", str(tmp_path / "out"), "--split", "1")
    assert result.returncode == 2
    assert result.stderr == f"error: {bad}:2: expected 'VIDEO.avi 0|1|2', got 'w2.avi x'\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "count", "is_sorted"), [("ucf101", 101, False), ("hmdb51", 51, True), ("kinetics400", 400, True)]
)
def test_shipped_class_lists(name: str, count: int, is_sorted: bool) -> None:
    names = read_class_names(REPO / "datasets" / name / "classes.txt")
    assert len(names) == count == len(set(names))
    assert (names == sorted(names)) is is_sorted  # UCF101 keeps classInd order, which is not sorted()
    if name == "ucf101":
        assert names[:3] == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
        assert names[34:37] == ["Hammering", "HammerThrow", "HandstandPushups"]
