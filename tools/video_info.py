"""Metadata of every video in a list, as CSV: path,height,width,num_frames,fps,backend,error.

    python tools/video_info.py --src ROOT --list LIST --out-file OUT.csv [--workers N] [--backend auto]

LIST has lines ``rel/path.ext LABEL`` (paths relative to ROOT). ``num_frames`` is the number of frames
that really decode (``tsn.io.probe``). An unreadable video gets a row with its reason in ``error``.
Exit status: 0 (also when some videos are unreadable: see the summary line), 2 for bad arguments or a
bad list.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tsn.cli import add_backend_arg, add_workers_arg, run_main
from tsn.data.lists import ListFormatError, read_video_list
from tsn.jobs.metadata import probe_rows, write_info_csv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="root folder the list's paths are relative to")
    parser.add_argument("--list", type=Path, required=True, help="video list 'rel/path.ext LABEL'")
    parser.add_argument("--out-file", type=Path, required=True, help="output CSV")
    add_workers_arg(parser, "probing processes")
    add_backend_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Probe every video of the list and write the CSV; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not args.src.is_dir():
        print(f"error: --src {args.src}: not a folder", file=sys.stderr)
        return 2
    try:
        records = read_video_list(args.list)
    except (ListFormatError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = probe_rows(args.src, [record.path for record in records], backend=args.backend, workers=args.workers)
    write_info_csv(rows, args.out_file)
    failed = sum(1 for row in rows if row.error)
    print(f"{len(rows)} videos, {failed} unreadable -> {args.out_file}")
    return 0


if __name__ == "__main__":
    run_main(main)
