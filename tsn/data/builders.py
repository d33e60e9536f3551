"""Builders from the official annotation formats to our video lists.

Each ``*_lists`` function reads a data set's own annotation files and returns
``DatasetLists``: the class names (index = 0-based label) and one list of
``VideoRecord`` per split, with paths relative to the folder that holds the videos.
``write_dataset_lists`` then writes ``classes.txt`` and ``<split>.txt`` per split.
Nothing here downloads anything; ``datasets/<name>/README.md`` gives the manual steps.

- UCF101: ``classInd.txt`` (``1 ApplyEyeMakeup``), ``trainlist0N.txt``
  (``ApplyEyeMakeup/v_..._g08_c01.avi 1``), ``testlist0N.txt`` (no label). The label is
  taken from the class folder of the path (classInd order, 0-based); a train-list label
  that disagrees with the folder is an error. Splits ``train_splitN``, ``test_splitN``.
- HMDB51: ``<class>_test_splitN.txt`` with lines ``video.avi MARK``, mark 1 = train,
  2 = test, 0 = unused. Classes are the sorted class names of those files.
  Splits ``train_splitN``, ``test_splitN``; paths ``<class>/<video>``.
- Kinetics-400/600/700: CSV ``label,youtube_id,time_start,time_end,split`` (more columns
  are ignored). File names as the ActivityNet crawler and mmaction2 write them:
  ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`` (times truncated to whole seconds,
  as ``%06d`` does). Folder per class named as the crawler writes it (the CSV label,
  spaces kept) by default; ``underscores=True`` for folders renamed with spaces -> ``_``
  (mmaction2's ``rename_classnames.sh``); ``class_folders=False`` for the flat layout of
  the CVDF archives. Split names come from the ``split`` column; class names are the
  sorted labels unless a class list is given.
- Something-Something v2: ``something-something-v2-labels.json`` (``{name: "index"}``),
  ``...-train.json`` and ``...-validation.json`` (lists of ``{"id", "label", "template",
  "placeholders"}``). The class is the template with its ``[`` ``]`` removed; files are
  ``{id}.webm``. Splits ``train`` and ``val`` (the test JSON has no labels).
- A folder per class: classes are the sorted subfolder names, videos found by extension
  (at any depth inside the class folder); optionally split folders above the classes.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from tsn.data.lists import (
    ListFormatError,
    VideoRecord,
    iter_lines,
    read_class_names,
    write_class_names,
    write_video_list,
)
from tsn.fileio import atomic_write_text
from tsn.io import VIDEO_EXTENSIONS
from tsn.data.splits import carve_validation

logger = logging.getLogger("tsn.data")

UCF101_SPLITS = (1, 2, 3)
HMDB51_SPLITS = (1, 2, 3)
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
STHV2_LABELS = "something-something-v2-labels.json"
STHV2_SPLIT_FILES = {"train": "something-something-v2-train.json", "val": "something-something-v2-validation.json"}


@dataclass
class DatasetLists:
    """What a builder returns: ``class_names[label]`` and ``splits[name] -> records``.

    ``missing[name]`` lists the paths dropped by ``keep_existing`` because no file was
    found (empty unless that filter ran).
    """

    class_names: list[str]
    splits: dict[str, list[VideoRecord]]
    missing: dict[str, list[str]] = field(default_factory=dict)


def _check_splits(splits: Sequence[int], known: Sequence[int], dataset: str) -> None:
    for split in splits:
        if split not in known:
            raise ValueError(f"{dataset} split must be one of {tuple(known)}, got {split!r}")


# ---------------------------------------------------------------------------- UCF101


def read_ucf101_classes(class_ind: str | os.PathLike) -> list[str]:
    """``classInd.txt`` (lines ``INDEX NAME``, INDEX from 1) -> names in index order."""
    by_index: dict[int, tuple[str, int]] = {}
    for line_no, text in iter_lines(class_ind):
        parts = text.split()
        if len(parts) != 2 or not (parts[0].isascii() and parts[0].isdecimal()):
            raise ListFormatError(class_ind, line_no, f"expected 'INDEX CLASSNAME', got {text!r}")
        index, name = int(parts[0]), parts[1]
        if index in by_index:
            raise ListFormatError(class_ind, line_no, f"index {index} repeats line {by_index[index][1]}")
        by_index[index] = (name, line_no)
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise ListFormatError(class_ind, None, f"indices must run 1..{len(by_index)} without gaps")
    names = [by_index[i][0] for i in range(1, len(by_index) + 1)]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ListFormatError(class_ind, None, f"class names repeat: {repeated}")
    return names


def _read_ucf101_split(path: Path, class_index: Mapping[str, int]) -> list[VideoRecord]:
    """A ``trainlist0N.txt`` (``Class/video.avi LABEL``) or ``testlist0N.txt`` (``Class/video.avi``)."""
    records = []
    for line_no, text in iter_lines(path):
        parts = text.split()
        if len(parts) > 2:
            raise ListFormatError(path, line_no, f"expected 'CLASS/VIDEO.avi [LABEL]', got {text!r}")
        video = parts[0]
        folder = posixpath.dirname(video)
        if not folder:
            raise ListFormatError(path, line_no, f"{video!r} has no class folder (expected 'CLASS/VIDEO.avi')")
        if folder not in class_index:
            raise ListFormatError(path, line_no, f"class folder {folder!r} of {video!r} is not in classInd.txt")
        label = class_index[folder]
        if len(parts) == 2:
            given = parts[1]
            if not (given.isascii() and given.isdecimal()) or int(given) != label + 1:
                raise ListFormatError(
                    path, line_no, f"label {given!r} disagrees with class folder {folder!r} (index {label + 1})"
                )
        records.append(VideoRecord(video, label, None, line_no))
    return records


def ucf101_lists(annotation_dir: str | os.PathLike, splits: Sequence[int] = UCF101_SPLITS) -> DatasetLists:
    """UCF101's ``ucfTrainTestlist`` folder -> classes in classInd order and, for each
    split N, ``train_splitN`` and ``test_splitN`` with paths ``Class/v_..._gXX_cYY.avi``
    relative to the ``UCF-101`` video folder."""
    _check_splits(splits, UCF101_SPLITS, "UCF101")
    folder = Path(annotation_dir)
    class_names = read_ucf101_classes(folder / "classInd.txt")
    class_index = {name: i for i, name in enumerate(class_names)}
    lists: dict[str, list[VideoRecord]] = {}
    for split in splits:
        lists[f"train_split{split}"] = _read_ucf101_split(folder / f"trainlist{split:02d}.txt", class_index)
        lists[f"test_split{split}"] = _read_ucf101_split(folder / f"testlist{split:02d}.txt", class_index)
    return DatasetLists(class_names, lists)


# ---------------------------------------------------------------------------- HMDB51

_HMDB51_MARKS = {"1": "train", "2": "test", "0": None}


def hmdb51_lists(annotation_dir: str | os.PathLike, splits: Sequence[int] = HMDB51_SPLITS) -> DatasetLists:
    """HMDB51's ``testTrainMulti_7030_splits`` folder -> sorted class names and, for each
    split N, ``train_splitN`` (mark 1) and ``test_splitN`` (mark 2); mark 0 is unused.
    Paths are ``<class>/<video>.avi`` relative to the folder of extracted class folders."""
    _check_splits(splits, HMDB51_SPLITS, "HMDB51")
    folder = Path(annotation_dir)
    files_by_split: dict[int, dict[str, Path]] = {}
    for split in splits:
        suffix = f"_test_split{split}.txt"
        files_by_split[split] = {p.name[: -len(suffix)]: p for p in folder.glob(f"*{suffix}")}
        if not files_by_split[split]:
            raise FileNotFoundError(f"{folder}: no '*{suffix}' files (HMDB51 split {split})")
    class_names = sorted(set().union(*(files.keys() for files in files_by_split.values())))
    lists: dict[str, list[VideoRecord]] = {}
    for split, files in files_by_split.items():
        absent = [name for name in class_names if name not in files]
        if absent:
            raise FileNotFoundError(f"{folder / (absent[0] + f'_test_split{split}.txt')}: missing (HMDB51 split file)")
        chosen: dict[str, list[VideoRecord]] = {"train": [], "test": []}
        for label, name in enumerate(class_names):
            path = files[name]
            for line_no, text in iter_lines(path):
                parts = text.split()
                if len(parts) != 2 or parts[1] not in _HMDB51_MARKS:
                    raise ListFormatError(path, line_no, f"expected 'VIDEO.avi 0|1|2', got {text!r}")
                part = _HMDB51_MARKS[parts[1]]
                if part is not None:
                    chosen[part].append(VideoRecord(f"{name}/{parts[0]}", label, None, line_no))
        lists[f"train_split{split}"] = chosen["train"]
        lists[f"test_split{split}"] = chosen["test"]
    return DatasetLists(class_names, lists)


# ---------------------------------------------------------------------------- Kinetics


def kinetics_filename(youtube_id: str, time_start: int, time_end: int, ext: str = ".mp4") -> str:
    """The clip file name the ActivityNet crawler writes: ``{id}_{start:06d}_{end:06d}.mp4``."""
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}{ext}"


def _seconds(value: str, column: str, path: Path, line_no: int) -> int:
    """A CSV time in seconds -> whole seconds, truncated as the downloaders' ``%06d`` does."""
    try:
        seconds = float(value)
    except ValueError:
        raise ListFormatError(path, line_no, f"{column} {value!r} is not a number") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ListFormatError(path, line_no, f"{column} {value!r} must be a finite number >= 0")
    return int(seconds)


def _read_kinetics_csv(csv_path: Path) -> pd.DataFrame:
    """One Kinetics CSV file, every cell as text; ``ListFormatError`` for an unreadable file or missing columns."""
    # Everything as text: a YouTube id such as "12345678901" or "NaN" must stay as written.
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ListFormatError(csv_path, None, f"not a readable CSV file: {err}".replace("\n", " ")) from None
    absent = [column for column in KINETICS_COLUMNS if column not in table.columns]
    if absent:
        raise ListFormatError(csv_path, 1, f"missing column(s) {absent}; expected header {','.join(KINETICS_COLUMNS)}")
    return table


def kinetics_lists(
    csv_paths: Sequence[str | os.PathLike],
    *,
    class_names: Sequence[str] | None = None,
    class_folders: bool = True,
    underscores: bool = False,
    split_dirs: Mapping[str, str] | None = None,
    ext: str = ".mp4",
) -> DatasetLists:
    """Kinetics CSV files (any of train/val/test, read with pandas) -> lists per ``split``
    value; a split named in several files is concatenated in file order.

    Paths are ``<split dir>/<class folder>/<file>``: the split dir is ``split_dirs[split]``
    (default: the split name itself; ``""`` for none); the class folder is the label as
    written in the CSV, with spaces -> ``_`` when ``underscores``, or none when
    ``class_folders`` is False. Labels index ``class_names`` when given (e.g.
    ``datasets/kinetics400/classes.txt``), else the sorted set of all labels in the files.
    A CSV without a ``label`` column (an unlabelled test split) is an error.
    """
    if not csv_paths:
        raise ValueError("kinetics_lists needs at least one CSV file")
    tables = [(Path(csv_path), _read_kinetics_csv(Path(csv_path))) for csv_path in csv_paths]
    if class_names is None:
        names = sorted({label for _, table in tables for label in table["label"]})
    else:
        names = list(class_names)
    label_of = {name: i for i, name in enumerate(names)}
    lists: dict[str, list[VideoRecord]] = {}
    for csv_path, table in tables:
        rows = zip(table["label"], table["youtube_id"], table["time_start"], table["time_end"], table["split"])
        # Row i of the table is line i + 2 of the file (line 1 is the header).
        for line_no, (label, youtube_id, start, end, split) in enumerate(rows, start=2):
            if not label or not youtube_id or not split:
                # unlabelled rows (a test split) cannot go into a list whose lines need a label
                raise ListFormatError(csv_path, line_no, "empty label, youtube_id or split")
            if label not in label_of:
                raise ListFormatError(csv_path, line_no, f"label {label!r} is not in the class list")
            name = kinetics_filename(
                youtube_id,
                _seconds(start, "time_start", csv_path, line_no),
                _seconds(end, "time_end", csv_path, line_no),
                ext,
            )
            parts = [split if split_dirs is None else split_dirs.get(split, split)]
            if class_folders:
                parts.append(label.replace(" ", "_") if underscores else label)
            parts.append(name)
            path = "/".join(part for part in parts if part)
            lists.setdefault(split, []).append(VideoRecord(path, label_of[label], None, line_no))
    return DatasetLists(names, lists)


# ---------------------------------------------------------------------------- Something-Something v2


def _load_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise ListFormatError(path, err.lineno, f"invalid JSON: {err.msg}") from None


def sthv2_lists(annotation_dir: str | os.PathLike, ext: str = ".webm") -> DatasetLists:
    """Something-Something v2 annotation folder -> the 174 classes in the labels file's
    index order, and ``train`` / ``val`` lists of ``{id}.webm`` (relative to the folder of
    videos). The class of an item is its ``template`` with ``[`` and ``]`` removed."""
    folder = Path(annotation_dir)
    labels_path = folder / STHV2_LABELS
    mapping = _load_json(labels_path)
    if not isinstance(mapping, dict):
        raise ListFormatError(labels_path, None, "expected a JSON object {class name: index}")
    by_index: dict[int, str] = {}
    for name, index in mapping.items():
        text = str(index)
        if not (text.isascii() and text.isdecimal()):
            raise ListFormatError(labels_path, None, f"index {index!r} of class {name!r} is not an integer")
        if int(text) in by_index:
            raise ListFormatError(labels_path, None, f"index {text} is used by {by_index[int(text)]!r} and {name!r}")
        by_index[int(text)] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise ListFormatError(labels_path, None, f"indices must run 0..{len(by_index) - 1} without gaps")
    class_names = [by_index[i] for i in range(len(by_index))]
    label_of = {name: i for i, name in enumerate(class_names)}
    lists: dict[str, list[VideoRecord]] = {}
    for split, file_name in STHV2_SPLIT_FILES.items():
        path = folder / file_name
        items = _load_json(path)
        if not isinstance(items, list):
            raise ListFormatError(path, None, "expected a JSON list of items")
        records = []
        for position, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item or "template" not in item:
                raise ListFormatError(path, None, f"item {position}: needs 'id' and 'template'")
            template = str(item["template"]).replace("[", "").replace("]", "")
            if template not in label_of:
                raise ListFormatError(
                    path, None, f"item {position} (id {item['id']}): template {template!r} is not in {STHV2_LABELS}"
                )
            records.append(VideoRecord(f"{item['id']}{ext}", label_of[template]))
        lists[split] = records
    return DatasetLists(class_names, lists)


# ---------------------------------------------------------------------------- folder per class


def _is_video(path: Path, extensions: Sequence[str]) -> bool:
    return path.is_file() and path.suffix.lower() in extensions and not path.name.startswith(".")


def folder_lists(
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
) -> DatasetLists:
    """A tree ``root/<class>/**/<video>`` -> one split ``all``; with ``splits`` (e.g.
    ``("train", "val")``), a tree ``root/<split>/<class>/**/<video>`` -> one list per split.

    Classes are the sorted names of the class folders (over all splits; hidden folders
    skipped), videos the files whose extension (any case) is in ``extensions``, sorted by
    path. Paths are relative to ``root``. Loose videos beside the class folders have no
    class: they are logged and left out.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: not a folder")
    wanted = tuple(ext.lower() for ext in extensions)
    split_roots = {"all": base} if splits is None else {split: base / split for split in splits}
    for split, split_root in split_roots.items():
        if not split_root.is_dir():
            raise FileNotFoundError(f"{split_root}: split folder {split!r} not found")
    class_names = sorted(
        {
            entry.name
            for split_root in split_roots.values()
            for entry in split_root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".")
        }
    )
    if not class_names:
        raise ValueError(f"{base}: no class folders found")
    lists: dict[str, list[VideoRecord]] = {}
    for split, split_root in split_roots.items():
        loose = [entry for entry in split_root.iterdir() if _is_video(entry, wanted)]
        if loose:
            logger.warning(
                "%s: %d video(s) outside any class folder left out, e.g. %s", split_root, len(loose), loose[0].name
            )
        records = []
        for label, name in enumerate(class_names):
            class_dir = split_root / name
            if not class_dir.is_dir():
                continue
            videos = sorted(p for p in class_dir.rglob("*") if _is_video(p, wanted))
            records.extend(VideoRecord(p.relative_to(base).as_posix(), label) for p in videos)
        lists[split] = records
    for split, records in lists.items():
        found = {record.label for record in records}
        empty = [name for label, name in enumerate(class_names) if label not in found]
        if empty:
            logger.warning("%s: split %r has no videos for class(es) %s", base, split, empty)
    return DatasetLists(class_names, lists)


# ---------------------------------------------------------------------------- filtering and writing


def keep_existing(lists: DatasetLists, root: str | os.PathLike) -> DatasetLists:
    """Drop records whose file (or frame folder) does not exist under ``root``; the dropped
    paths go to ``missing[split]``. Logs the count per split."""
    base = Path(root)
    kept: dict[str, list[VideoRecord]] = {}
    missing: dict[str, list[str]] = {}
    for split, records in lists.splits.items():
        present = [(base / record.path).exists() for record in records]
        kept[split] = [record for record, ok in zip(records, present) if ok]
        absent = [record.path for record, ok in zip(records, present) if not ok]
        if absent:
            missing[split] = absent
            logger.warning("%s: %d of %d videos missing under %s", split, len(absent), len(records), base)
    return DatasetLists(list(lists.class_names), kept, missing)


# Videos that must stay on one side of a validation split carved from a training list (``carve_validation``):
# UCF101's groups (``v_<Class>_g08_c01.avi``: the same actors and scene, split by group number in the official
# lists); HMDB51's clips of one source film within a class (``<film>_<action>_<tags>_<n>.avi``, the tags being
# visible body part, camera motion, people, viewpoint, quality). Other data sets: every video on its own.
VALIDATION_GROUPS: dict[str, str] = {
    "ucf101": r"_g(\d+)_c\d+",
    "hmdb51": r"([^/]+)_[a-z]_(?:cm|nm)_np\d+_(?:fr|ba|le|ri)_(?:bad|med|goo)_\d+\.\w+$",
}


def carve_validation_splits(lists: DatasetLists, fraction: float, seed: int = 0,
                            group: str | None = None) -> DatasetLists:
    """``lists`` plus, for each training split ``train*``, ``<split>_val`` (about ``fraction`` of its videos, whole
    groups, stratified by class) and ``<split>_minus_val`` (the rest), so that a run can choose its checkpoint
    on videos that are neither trained on nor tested on."""
    splits = dict(lists.splits)
    for name, records in lists.splits.items():
        if name.startswith("train") and records:
            rest, held = carve_validation(records, fraction, seed, group)
            splits[f"{name}_minus_val"], splits[f"{name}_val"] = rest, held
    return DatasetLists(lists.class_names, splits, lists.missing)


def write_dataset_lists(lists: DatasetLists, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``classes.txt``, ``<split>.txt`` (video lists) and, where files were missing,
    ``<split>_missing.txt`` (one path a line) into ``out_dir``, atomically. Returns the
    paths written."""
    out = Path(out_dir)
    written = [out / "classes.txt"]
    write_class_names(lists.class_names, written[0])
    for split, records in lists.splits.items():
        path = out / f"{split}.txt"
        write_video_list(records, path)
        written.append(path)
    for split, paths in lists.missing.items():
        path = out / f"{split}_missing.txt"
        atomic_write_text(path, "".join(f"{p}\n" for p in paths))
        written.append(path)
    return written


# ---------------------------------------------------------------------------- the whole recipe (tools/build_lists.py)

DATASETS = ("ucf101", "hmdb51", "kinetics", "sthv2", "folder")


def dataset_lists(dataset: str, sources: Sequence[str], splits: Sequence[str] | None = None, *,
                  classes: str | None = None, class_folders: bool = True, underscores: bool = False,
                  split_dirs: Mapping[str, str] | None = None, ext: str = ".mp4") -> DatasetLists:
    """The lists of ``dataset`` (one of ``DATASETS``) from ``sources``: its annotation folder, Kinetics' CSV
    files, or for "folder" the video root. ``splits``: UCF101's and HMDB51's split numbers as text (default all
    three), or the folder's split subfolders (default none). ``classes`` (a class list file fixing the label
    order) and the other keywords are ``kinetics_lists``'s. ValueError for an unknown data set."""
    if dataset in ("ucf101", "hmdb51"):
        numbers = tuple(sorted({int(split) for split in splits})) if splits else (1, 2, 3)
        return (ucf101_lists if dataset == "ucf101" else hmdb51_lists)(sources[0], numbers)
    if dataset == "kinetics":
        return kinetics_lists(sources, class_names=read_class_names(classes) if classes else None,
                              class_folders=class_folders, underscores=underscores, split_dirs=split_dirs, ext=ext)
    if dataset == "sthv2":
        return sthv2_lists(sources[0])
    if dataset == "folder":
        return folder_lists(sources[0], splits)
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def refined_lists(lists: DatasetLists, dataset: str, existing_under: str | None = None,
                  carve_val: float | None = None, seed: int = 0, group: str | None = None) -> DatasetLists:
    """``lists`` without the videos missing under ``existing_under`` (when given, ``keep_existing``) and, with
    ``carve_val``, with validation splits carved from its training splits (``carve_validation_splits``; ``group``
    None: the entry of ``dataset`` in ``VALIDATION_GROUPS``)."""
    if existing_under is not None:
        lists = keep_existing(lists, existing_under)
    if carve_val is not None:
        group = group if group is not None else VALIDATION_GROUPS.get(dataset)
        lists = carve_validation_splits(lists, carve_val, seed, group)
    return lists


def lists_summary(dataset: str, lists: DatasetLists, written: Sequence[Path]) -> str:
    """The lines a run of ``tools/build_lists.py`` prints: classes, videos per split (and how many were dropped
    as missing), the files written."""
    lines = [f"{dataset}: {len(lists.class_names)} classes"]
    for split, records in lists.splits.items():
        dropped = len(lists.missing.get(split, ()))
        lines.append(f"  {split}: {len(records)} videos" + (f" ({dropped} missing, dropped)" if dropped else ""))
    lines += [f"wrote {path}" for path in written]
    return "\n".join(lines)
