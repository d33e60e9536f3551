"""Build our video lists and classes.txt from a data set's official annotation files.

Examples (each data set's steps are in datasets/<name>/README.md):
  python tools/build_lists.py --dataset ucf101 --src data/ucf101/ucfTrainTestlist --out data/ucf101 --split 1
  python tools/build_lists.py --dataset hmdb51 --src data/hmdb51/testTrainMulti_7030_splits --out data/hmdb51
  python tools/build_lists.py --dataset kinetics --src data/kinetics400/annotations/train.csv
      --src data/kinetics400/annotations/val.csv --classes datasets/kinetics400/classes.txt
      --out data/kinetics400 --videos data/kinetics400 --only-existing
  python tools/build_lists.py --dataset sthv2 --src data/sthv2/labels --out data/sthv2
  python tools/build_lists.py --dataset folder --src my_videos --out my_videos/lists --split train val

--carve-val F also writes, for each training list <split>.txt, <split>_val.txt (about F of its videos,
stratified by class, whole groups: UCF101's gXX, HMDB51's source films, or --group REGEX) and
<split>_minus_val.txt (the rest): train on the second, choose the checkpoint on the first, test on the
test list.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from tsn.cli import run_main
from tsn.data.builders import DATASETS, dataset_lists, lists_summary, refined_lists, write_dataset_lists


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--src", required=True, action="append", help="annotation folder; Kinetics: a CSV file "
                        "(repeatable: --src train.csv --src val.csv); folder: video root")
    parser.add_argument("--out", type=Path, required=True, help="folder for classes.txt and <split>.txt")
    parser.add_argument("--split", nargs="+", metavar="SPLIT", help="UCF101/HMDB51: split numbers 1..3 (default: "
                        "all three); folder: the split subfolders above the class folders (default: none)")
    parser.add_argument("--videos", help="video root, for --only-existing (folder: --src)")
    parser.add_argument("--only-existing", action="store_true", help="drop entries whose file is absent under --videos")
    carve = parser.add_argument_group("validation split")
    carve.add_argument("--carve-val", type=float, metavar="F",
                       help="also write <train split>_val.txt (about F of it, whole groups) and _minus_val.txt")
    carve.add_argument("--group", metavar="REGEX",
                       help="with --carve-val: the videos whose paths give the same first capture group stay together "
                            "(default: UCF101 '_g(\\d+)_c\\d+', HMDB51 the clip's source film, else none)")
    carve.add_argument("--seed", type=int, default=0, help="with --carve-val: the seed of the split (default 0)")
    kinetics = parser.add_argument_group("kinetics")
    kinetics.add_argument("--classes", help="class list fixing the label order (default: sorted CSV labels)")
    kinetics.add_argument("--underscores", action="store_true", help="class folders with spaces -> '_' (mmaction2)")
    kinetics.add_argument("--flat", action="store_true", help="no class folders (the CVDF archives)")
    kinetics.add_argument("--split-dir", action="append", default=[], metavar="SPLIT=DIR",
                          help="folder of a split's videos (default: the split name), repeatable")
    kinetics.add_argument("--ext", default=".mp4", help="clip file extension (default .mp4)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset != "kinetics" and len(args.src) != 1:
        parser.error(f"--src takes one path for {args.dataset}")
    if args.only_existing and not args.videos and args.dataset != "folder":
        parser.error("--only-existing needs --videos ROOT")
    kinetics_only = {"--classes": args.classes, "--underscores": args.underscores, "--flat": args.flat,
                     "--split-dir": args.split_dir, "--ext": args.ext != ".mp4"}
    for flag, value in kinetics_only.items():
        if value and args.dataset != "kinetics":
            parser.error(f"{flag} applies to --dataset kinetics only")
    if args.split and args.dataset not in ("ucf101", "hmdb51", "folder"):
        parser.error("--split applies to ucf101, hmdb51 and folder only")
    if args.split and args.dataset in ("ucf101", "hmdb51") and not set(args.split) <= {"1", "2", "3"}:
        parser.error(f"--split: {args.dataset} has splits 1, 2 and 3, got {' '.join(args.split)}")
    if args.carve_val is not None and not 0 < args.carve_val <= 0.5:
        parser.error(f"--carve-val must be in (0, 0.5], got {args.carve_val}")
    if args.group is not None and args.carve_val is None:
        parser.error("--group applies to --carve-val only")
    for item in args.split_dir:
        if "=" not in item:
            parser.error(f"--split-dir {item!r}: expected SPLIT=DIR")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        split_dirs = dict(item.split("=", 1) for item in args.split_dir)
        lists = dataset_lists(args.dataset, args.src, args.split, classes=args.classes, class_folders=not args.flat,
                              underscores=args.underscores, split_dirs=split_dirs, ext=args.ext)
        existing_under = (args.videos or args.src[0]) if args.only_existing else None
        lists = refined_lists(lists, args.dataset, existing_under, args.carve_val, args.seed, args.group)
        written = write_dataset_lists(lists, args.out)
    except (OSError, ValueError, re.error) as err:  # ListFormatError is a ValueError; re.error: a bad --group
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(lists_summary(args.dataset, lists, written))
    return 0


if __name__ == "__main__":
    run_main(main)
