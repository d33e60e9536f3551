"""Soak tests of memory: the loader workers over many epochs with each backend, or a training process over
many steps.

    python tools/soak.py --src ROOT --list LIST [--backends pyav decord opencv] [--epochs 30] [--workers N]
                         [--num-segments 8] [--input-size 112] [--batch-size 4] [--limit N]
    python tools/soak.py --train-steps 2000 [--backbone efficientnet_lite0] [--batch-size 4] [--num-segments 8]
                         [--input-size 112]

Loader: one JSON line per backend: worker and main-process RSS (MB) after the first epoch (warm-up) and
after the last, and the largest growth of one worker. Training: one JSON line with the process's RSS over
the first and the last tenth of the steps (random clips, so no data is needed). See ``tsn.measure.soak``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tsn.cli import UsageError, add_batch_size_arg, add_progress_arg, add_workers_arg, int_at_least, run_main
from tsn.data.lists import read_video_list
from tsn.io import BACKEND_CHOICES
from tsn.measure.soak import soak, train_soak


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, help="root folder the list's paths are relative to (loader soak)")
    parser.add_argument("--list", type=Path, help="video list 'rel/path.ext LABEL' (loader soak)")
    parser.add_argument("--train-steps", type=int_at_least(10), help="soak a training process this many steps instead")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="the training soak's backbone (random weights)")
    parser.add_argument("--backends", nargs="+", choices=BACKEND_CHOICES,
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
    if args.train_steps is not None:
        if args.src is not None or args.list is not None:
            raise UsageError("--train-steps soaks a training process on random clips: no --src or --list")
        print(json.dumps(train_soak(args.backbone, args.train_steps, args.batch_size, args.num_segments,
                                    args.input_size, progress=not args.no_progress)), flush=True)
        return
    if args.src is None or args.list is None:
        raise UsageError("the loader soak needs --src and --list (or --train-steps for a training soak)")
    if not args.list.is_file():
        raise UsageError(f"--list {args.list}: no such file")
    records = read_video_list(args.list)[: args.limit]
    for backend in args.backends:
        result = soak(records, args.src, backend, args.epochs, args.workers, args.num_segments, args.input_size,
                      args.batch_size, progress=not args.no_progress)
        print(json.dumps(result.as_dict()), flush=True)


if __name__ == "__main__":
    run_main(main)
