"""Extract optical flow (and optionally the RGB frames) from videos and write the flow list; resumable and safe to kill.

    python tools/extract_flow.py --src ROOT --out OUT [--list LIST] [--method dis|tvl1|farneback] [--bound 20]
                                 [--short-side 256] [--rgb] [--workers N] [--quality 95] [--strict]

``ROOT/<rel>.<ext>`` -> ``OUT/<rel>/x_00001.jpg``, ``y_00001.jpg`` ... (mmaction2's layout; pair i is the motion
from frame i to i + 1, so n frames give n - 1 pairs), and with ``--rgb`` also ``img_00001.jpg`` ... from the same
decoding pass. Flow is computed on frames resized to ``--short-side``, clipped to ±bound pixels and quantised to
0..255 (``tsn.jobs.flow``). With ``--list`` the flow list ``OUT/<list stem>_flow.txt`` (and, with ``--rgb``,
``OUT/<list stem>_rawframes.txt``) keeps the list's order and labels; without it every video under ROOT is taken,
labelled by its top-level folder, into ``OUT/flow.txt``. Unreadable videos are left out, printed and written to
``OUT/[<list stem>_]flow_errors.csv``. Exit status: 0, or 1 when --strict and a video failed, 2 for bad arguments
or a bad list. A rerun skips finished videos and redoes the rest (see ``tsn.jobs.extract``).
"""

from __future__ import annotations

import argparse
import sys

from tsn.cli import add_extraction_args, positive_float, run_main
from tsn.jobs.command import run_command
from tsn.jobs.extract import FlowSettings, FrameKind
from tsn.jobs.flow import DEFAULT_BOUND, FLOW_METHODS, FlowMethodUnavailable, flow_function


def build_parser() -> argparse.ArgumentParser:
    """The command line (argparse exits with status 2 on a bad flag)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_extraction_args(parser)
    parser.add_argument("--method", choices=FLOW_METHODS, default="dis",
                        help="dis (default), tvl1 (TSN's; OpenCV contrib) or farneback")
    parser.add_argument("--bound", type=positive_float, default=DEFAULT_BOUND, help="clip flow to ± this many pixels")
    parser.add_argument("--rgb", action="store_true", help="also write the RGB frames img_00001.jpg ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the extraction; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        flow_function(args.method)  # a missing OpenCV module is reported before any video is decoded
    except FlowMethodUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    kind = FrameKind(args.short_side, args.quality, args.backend, FlowSettings(args.method, args.bound, args.rgb))
    return run_command(kind, args.src, args.out, args.list, args.workers, not args.no_progress, args.strict)


if __name__ == "__main__":
    run_main(main)
