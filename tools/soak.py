"""Soak test of the loader workers' memory: read the same videos for many epochs with each backend.

    python tools/soak.py --src ROOT --list LIST [--backends pyav decord opencv] [--epochs 30] [--workers 2]
                         [--segments 8] [--input-size 112] [--batch-size 4] [--limit N]

Prints one JSON line per backend: worker and main-process RSS (MB) after the first epoch (warm-up) and
after the last, and the largest growth of one worker. See ``tsn.engine.soak``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tsn.cli import UsageError, run_main
from tsn.data.lists import read_video_list
from tsn.engine.soak import soak


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="root folder the list's paths are relative to")
    parser.add_argument("--list", type=Path, required=True, help="video list 'rel/path.ext LABEL'")
    parser.add_argument("--backends", nargs="+", choices=("auto", "pyav", "decord", "opencv"),
                        default=["pyav", "decord", "opencv"])
    parser.add_argument("--epochs", type=int, default=30, help="epochs per backend (the first is the warm-up)")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--segments", type=int, default=8, help="frames sampled per clip")
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--limit", type=int, help="only the first N videos of the list")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.epochs < 2 or args.workers < 1 or args.segments < 1 or args.batch_size < 1:
        parser.error("--epochs must be >= 2; --workers, --segments and --batch-size >= 1")
    return args


def main() -> None:
    args = parse_args()
    if not args.list.is_file():
        raise UsageError(f"--list {args.list}: no such file")
    records = read_video_list(args.list)[: args.limit]
    for backend in args.backends:
        result = soak(records, args.src, backend, args.epochs, args.workers, args.segments, args.input_size,
                      args.batch_size, progress=not args.no_progress)
        print(json.dumps(result.as_dict()), flush=True)


if __name__ == "__main__":
    run_main(main)
