"""Soak test of the loader workers' memory: read the same videos for many epochs with each backend.

    python tools/soak.py --src ROOT --list LIST [--backends pyav decord opencv] [--epochs 30] [--workers N]
                         [--num-segments 8] [--input-size 112] [--batch-size 4] [--limit N]

Prints one JSON line per backend: worker and main-process RSS (MB) after the first epoch (warm-up) and
after the last, and the largest growth of one worker. See ``tsn.engine.soak``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tsn.cli import UsageError, add_batch_size_arg, add_progress_arg, add_workers_arg, int_at_least, run_main
from tsn.data.lists import read_video_list
from tsn.engine.soak import soak


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="root folder the list's paths are relative to")
    parser.add_argument("--list", type=Path, required=True, help="video list 'rel/path.ext LABEL'")
    parser.add_argument("--backends", nargs="+", choices=("auto", "pyav", "decord", "opencv", "torchcodec"),
                        default=["pyav", "decord", "opencv"])
    parser.add_argument("--epochs", type=int_at_least(2), default=30, help="epochs per backend (the first is the warm-up)")
    add_workers_arg(parser, "loader worker processes")
    parser.add_argument("--num-segments", type=int_at_least(1), default=8, help="frames sampled per clip")
    parser.add_argument("--input-size", type=int_at_least(1), default=112)
    add_batch_size_arg(parser, "clips per batch", default=4)
    parser.add_argument("--limit", type=int_at_least(1), help="only the first N videos of the list")
    add_progress_arg(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if not args.list.is_file():
        raise UsageError(f"--list {args.list}: no such file")
    records = read_video_list(args.list)[: args.limit]
    for backend in args.backends:
        result = soak(records, args.src, backend, args.epochs, args.workers, args.num_segments, args.input_size,
                      args.batch_size, progress=not args.no_progress)
        print(json.dumps(result.as_dict()), flush=True)


if __name__ == "__main__":
    run_main(main)
