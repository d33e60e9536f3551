"""Read every entry of one or more lists as training would, and report each bad one with its reason.

    python tools/check_videos.py --src ROOT --list LIST [--list LIST ...] [--out-file OUT.csv] [--workers N]
                                 [--list-format video|rawframes|flow] [--new-length L] [--backend auto|pyav|decord|opencv|torchcodec]
                                 [--classes classes.txt] [--num-segments 8] [--num-clips 1]

Each bad entry is printed as ``LIST:LINE: PATH: REASON`` (malformed lines and, with --classes, labels
outside the class list included); --out-file writes them as list_path,line,path,reason. What is read per
video (probe, then the frames of the test sampling) and what that cannot catch: ``tsn.jobs.check``.
Exit status: 0 when every entry is good, 1 when any is bad, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tsn.cli import UsageError, add_backend_arg, add_progress_arg, add_workers_arg, int_at_least, run_main
from tsn.config import DEFAULT_NEW_LENGTH
from tsn.jobs.check import check_lists, write_problems_csv
from tsn.data.lists import read_class_names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="root folder the lists' paths are relative to")
    parser.add_argument("--list", type=Path, action="append", required=True,
                        help="video or rawframe list (repeatable: --list train.txt --list val.txt)")
    parser.add_argument("--out-file", type=Path, help="write the bad entries here (CSV)")
    add_workers_arg(parser, "reading processes (0: this process)", minimum=0)
    parser.add_argument("--list-format", choices=("video", "rawframes", "flow"), default="video",
                        help="flow: the flow folders and list of tools/extract_flow.py")
    add_backend_arg(parser)
    parser.add_argument("--classes", type=Path, help="class list: labels outside it are reported")
    parser.add_argument("--num-segments", type=int_at_least(1), default=8, help="segments per clip")
    parser.add_argument("--num-clips", type=int_at_least(1), default=1, help="temporal clips read per video")
    parser.add_argument("--new-length", type=int_at_least(1),
                        help="consecutive frames (flow pairs) per segment, as data.new_length (default: 5 for flow, "
                             "else 1)")
    add_progress_arg(parser)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.src.is_dir():
        raise UsageError(f"--src {args.src}: not a folder")
    for path in args.list:
        if not path.is_file():
            raise UsageError(f"--list {path}: no such file")
    if args.classes is not None and not args.classes.is_file():
        raise UsageError(f"--classes {args.classes}: no such file")
    num_classes = len(read_class_names(args.classes)) if args.classes is not None else None
    new_length = args.new_length or DEFAULT_NEW_LENGTH["flow" if args.list_format == "flow" else "rgb"]
    report = check_lists(args.src, args.list, args.list_format, args.backend, num_classes, args.num_segments,
                         args.num_clips, args.workers, progress=not args.no_progress, new_length=new_length)
    for problem in report.problems:
        print(problem)
    if args.out_file is not None:
        write_problems_csv(report.problems, args.out_file)
    bad = len({(problem.list_path, problem.line) for problem in report.problems})
    print(f"{report.entries} entries checked, {bad} bad line(s)" + (f" -> {args.out_file}" if args.out_file else ""))
    return 1 if report.problems else 0


if __name__ == "__main__":
    run_main(main)
