"""Make training copies of videos (small MP4 files, regular keyframes, the same frames) and rewrite the list;
resumable and safe to kill.

    python tools/prepare_videos.py --src ROOT --out OUT [--list LIST] [--short-side 256] [--keyframe-interval 16]
                                   [--codec h264|hevc] [--crf 23] [--bframes 3] [--workers N]
                                   [--backend auto|pyav|decord|opencv|torchcodec] [--strict] [--no-progress]

``ROOT/<rel>.<ext>`` -> ``OUT/<rel>.mp4``: video only, short side ``--short-side`` (0 keeps the size; odd sides
lose one line), constant frame rate, a keyframe exactly every ``--keyframe-interval`` frames (1 = all intra),
encoded by PyAV's bundled libx264 (``h264``) or libx265 (``hevc``) at ``--crf``; the copy's frame count is
checked against the source's. With ``--list`` (lines ``rel/path.ext LABEL``) the video list
``OUT/<list stem>_prepared.txt`` keeps the list's order and labels with the copies' paths; without it every
video under ROOT is taken, labelled by its top-level folder (folder-per-class; names in ``OUT/classes.txt``) or
0 when ROOT is flat, into ``OUT/prepared.txt``. Unreadable videos are left out of the list, printed at the end
and written to ``OUT/[<list stem>_]prepare_errors.csv``. Exit status: 0, or 1 when --strict and a video
failed, 2 for bad arguments or a bad list. A rerun skips finished copies and redoes the rest (see
``tsn.jobs.prepare``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from tsn.cli import add_source_args, int_at_least, run_main
from tsn.jobs.command import run_command
from tsn.jobs.prepare import CODECS, MAX_BFRAMES, MAX_CRF, CopyKind, PrepareSettings


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """argparse ``type=``: an integer in ``low..high``."""
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line (argparse exits with status 2 on a bad flag)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(parser, "encoding processes")
    parser.add_argument("--keyframe-interval", type=int_at_least(1), default=16,
                        help="a keyframe every this many frames (1: every frame)")
    parser.add_argument("--codec", choices=sorted(CODECS), default="h264", help="h264 (libx264) or hevc (libx265)")
    parser.add_argument("--crf", type=_int_in(0, MAX_CRF), default=23, help=f"quality, 0 (lossless) .. {MAX_CRF}")
    parser.add_argument("--bframes", type=_int_in(0, MAX_BFRAMES), default=3,
                        help="most non-reference B-frames in a row (0: none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Prepare the copies; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.short_side == 1:
        parser.error("argument --short-side: must be 0 (keep the size) or >= 2 (1 would crop to nothing), got 1")
    src, out = args.src.resolve(), args.out.resolve()
    if out == src:
        print(f"error: --out {args.out}: must differ from --src", file=sys.stderr)
        return 2
    if args.list is None and src in out.parents:
        # Without a list, the next run would take the copies inside ROOT for videos to copy.
        print(f"error: --out {args.out}: lies inside --src; give --list or another --out", file=sys.stderr)
        return 2
    settings = PrepareSettings(short_side=args.short_side, keyframe_interval=args.keyframe_interval,
                               codec=args.codec, crf=args.crf, bframes=args.bframes)
    kind = CopyKind(settings, args.backend)
    return run_command(kind, args.src, args.out, args.list, args.workers, not args.no_progress, args.strict)


if __name__ == "__main__":
    run_main(main)
