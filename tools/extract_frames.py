"""Extract videos to folders of JPEG frames and write the rawframe list; resumable and safe to kill.

    python tools/extract_frames.py --src ROOT --out OUT [--list LIST] [--short-side 256] [--workers N]
                                   [--quality 95] [--backend auto|pyav|decord|opencv] [--strict]

``ROOT/<rel>.<ext>`` -> ``OUT/<rel>/img_00001.jpg ...``. With ``--list`` (lines ``rel/path.ext LABEL``) the
list ``OUT/<list stem>_rawframes.txt`` keeps the list's order and labels; without it every video under ROOT is
taken, labelled by its top-level folder (folder-per-class; names in ``OUT/classes.txt``) or 0 when ROOT is flat,
into ``OUT/rawframes.txt``. Unreadable videos are left out of the list, printed at the end and written to
``OUT/[<list stem>_]extract_errors.csv``. Exit status: 0, or 1 when --strict and a video failed, 2 for bad
arguments or a bad list. A rerun skips finished videos and redoes the rest (see ``tsn.io.extract``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tsn.cli import int_at_least
from tsn.data.lists import (ListFormatError, VideoRecord, read_video_list, write_class_names,
                            write_rawframe_list)
from tsn.fileio import atomic_write_text
from tsn.io.extract import ExtractJob, extract_frames, failures_csv, find_videos


def _quality(text: str) -> int:
    """argparse type: a JPEG quality 0..100."""
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be in 0..100, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line -> options (argparse exits with status 2 on a bad flag)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="root folder of the videos")
    parser.add_argument("--out", type=Path, required=True, help="root folder of the frame folders and the list")
    parser.add_argument("--list", type=Path, help="video list 'rel/path.ext LABEL' (paths relative to --src)")
    parser.add_argument("--short-side", type=int_at_least(0), default=256, help="resize short side to this; 0 keeps")
    parser.add_argument("--workers", type=int_at_least(1), default=os.cpu_count() or 1, help="decoding processes")
    parser.add_argument("--quality", type=_quality, default=95, help="JPEG quality 0..100")
    parser.add_argument("--backend", choices=("auto", "pyav", "decord", "opencv"), default="auto")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any video failed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the extraction; returns the exit status."""
    args = parse_args(argv)
    if not args.src.is_dir():
        print(f"error: --src {args.src}: not a folder", file=sys.stderr)
        return 2
    try:
        if args.list is not None:
            jobs = [ExtractJob(record.path, record.label) for record in read_video_list(args.list)]
            list_path = args.out / f"{args.list.stem}_rawframes.txt"
            errors_path = args.out / f"{args.list.stem}_extract_errors.csv"
        else:
            jobs, classes = find_videos(args.src)
            list_path, errors_path = args.out / "rawframes.txt", args.out / "extract_errors.csv"
            if classes:
                write_class_names(classes, args.out / "classes.txt")
    except (ListFormatError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    summary = extract_frames(args.src, args.out, jobs, short_side=args.short_side, quality=args.quality,
                             workers=args.workers, backend=args.backend)
    records = [VideoRecord(video.frame_dir, video.label, video.num_frames) for video in summary.extracted]
    write_rawframe_list(records, list_path)
    atomic_write_text(errors_path, failures_csv(summary.failed))
    for failure in summary.failed:
        print(f"failed: {failure.path}: {failure.reason}", file=sys.stderr)
    print(f"{summary.line()} -> {list_path}")
    return 1 if args.strict and summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
