"""Test a trained TSN with multi-view testing (temporal clips x spatial crops) and write the report.

    python tools/test.py --config C --checkpoint P --out O [--list L] [--num-clips N] [--crops 1|3|10] [--batch-size B]

Writes O/metrics.json, O/per_class.csv, O/confusion_matrix.csv, O/confusion_matrix.png, O/scores.npy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tsn.cli import int_at_least, run_main
from tsn.config import load_config
from tsn.engine.build import build_class_names
from tsn.engine.testing import format_per_class_table, run_test
from tsn.engine.trainer import setup_logging


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the report files")
    parser.add_argument("--list", type=Path, help="list to test (default: data.test_list)")
    parser.add_argument("--num-clips", type=int, help="temporal clips per video (default: test.num_clips)")
    parser.add_argument("--crops", type=int, choices=(1, 3, 10), help="spatial crops (default: test.crops)")
    parser.add_argument("--batch-size", type=int_at_least(1),
                        help="videos per loader batch, each with all its views (default: data.batch_size, "
                             "but at most test.clips_per_forward clips in all, at least one video)")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args()
    if args.num_clips is not None and args.num_clips < 1:
        parser.error(f"--num-clips must be >= 1, got {args.num_clips}")
    return args


def main() -> None:
    args = parse_args()
    if not args.config.is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file")
    cfg = load_config(args.config, args.opt)
    setup_logging(None, True)
    report = run_test(cfg, args.checkpoint, args.out, list_file=args.list, num_clips=args.num_clips,
                      crops=args.crops, device=args.device, batch_size=args.batch_size)
    print(format_per_class_table(report, build_class_names(cfg)))
    print(f"report written to {args.out}")


if __name__ == "__main__":
    run_main(main)
