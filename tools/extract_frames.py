"""Extract videos to folders of JPEG frames and write the rawframe list; resumable and safe to kill.

    python tools/extract_frames.py --src ROOT --out OUT [--list LIST] [--short-side 256] [--workers N]
                                   [--quality 95] [--backend auto|pyav|decord|opencv|torchcodec] [--strict]

``ROOT/<rel>.<ext>`` -> ``OUT/<rel>/img_00001.jpg ...``. With ``--list`` (lines ``rel/path.ext LABEL``) the
list ``OUT/<list stem>_rawframes.txt`` keeps the list's order and labels; without it every video under ROOT is
taken, labelled by its top-level folder (folder-per-class; names in ``OUT/classes.txt``) or 0 when ROOT is flat,
into ``OUT/rawframes.txt``. Unreadable videos are left out of the list, printed at the end and written to
``OUT/[<list stem>_]extract_errors.csv``. Exit status: 0, or 1 when --strict and a video failed, 2 for bad
arguments or a bad list. A rerun skips finished videos and redoes the rest (see ``tsn.jobs.extract``).
"""

from __future__ import annotations

import argparse

from tsn.cli import add_extraction_args, run_main
from tsn.jobs.command import run_command
from tsn.jobs.extract import FrameKind


def build_parser() -> argparse.ArgumentParser:
    """The command line (argparse exits with status 2 on a bad flag)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_extraction_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the extraction; returns the exit status."""
    args = build_parser().parse_args(argv)
    kind = FrameKind(args.short_side, args.quality, args.backend)
    return run_command(kind, args.src, args.out, args.list, args.workers, not args.no_progress, args.strict)


if __name__ == "__main__":
    run_main(main)
