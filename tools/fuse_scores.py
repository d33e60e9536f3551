"""Fuse video-level score files (e.g. two-stream RGB + flow) with weights and report the metrics.

    python tools/fuse_scores.py --scores rgb/scores.npy flow/scores.npy --weights 1 1.5 \
        --list test.txt --classes classes.txt --out fused [--list-format video|rawframes]

The score files must come from tools/test.py runs over the same list (rows in list order). A row with NaN or
infinite scores is accepted only where the skipped.csv beside its file lists it (a video that run could not
score); it is then left out of the fused metrics and listed in OUT/skipped.csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tsn.cli import UsageError, run_main
from tsn.data.lists import read_class_names, read_list
from tsn.evaluation.testing import UnscoredRow, format_per_class_table, fuse_scores, score_report, write_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", type=Path, nargs="+", required=True, help="scores.npy files")
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per file (default: all 1)")
    parser.add_argument("--list", type=Path, required=True, help="the list the scores were computed on")
    parser.add_argument("--list-format", choices=("video", "rawframes"), default="video", help="format of --list")
    parser.add_argument("--classes", type=Path, required=True, help="class names, one a line")
    parser.add_argument("--out", type=Path, required=True, help="folder for the fused report")
    return parser


def parse_args() -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args()
    if args.weights is not None and len(args.weights) != len(args.scores):
        parser.error(f"{len(args.scores)} score files but {len(args.weights)} weights")
    return args


def main() -> None:
    args = parse_args()
    class_names = read_class_names(args.classes)
    records = read_list(args.list, args.list_format)
    labels = np.array([record.label for record in records], dtype=np.int64)
    for path in args.scores:
        if not path.is_file():
            raise UsageError(f"--scores {path}: no such file")
    try:
        fused = fuse_scores(args.scores, args.weights or [1.0] * len(args.scores), [r.path for r in records])
    except ValueError as err:  # not a score array, shapes that differ, unexplained NaN rows, an old skipped.csv
        raise UsageError(str(err)) from None
    scores = fused.scores
    if scores.shape != (len(labels), len(class_names)):
        raise UsageError(f"scores of shape {scores.shape} do not fit {len(labels)} videos x {len(class_names)} classes")
    scored = np.ones(len(labels), dtype=bool)
    scored[list(fused.unscored)] = False
    report = score_report(scores[scored], labels[scored], len(class_names))
    unscored = [UnscoredRow(row, records[row].path, reason) for row, reason in sorted(fused.unscored.items())]
    write_report(report, class_names, args.out, scores, unscored)
    print(format_per_class_table(report, class_names))


if __name__ == "__main__":
    run_main(main)
