"""Linear probe: logistic regression on frozen backbone features, the baseline every fine-tune is measured against.

    python tools/linear_probe.py --config C --out O [--train-list L] [--test-list L] [--checkpoint P]
                                 [--l2 X] [--num-clips N] [--crops 1|3|10] [--cache-dir D] [--opt key=value ...]

Features of every video and test view (``test.num_clips`` x ``test.crops`` by default) are computed once
and cached (``O/cache`` or ``--cache-dir``); the L2 strength is chosen by a 5-fold cross-validation over the
training videos unless ``--l2`` is given. Writes what ``tools/test.py`` writes (metrics.json, per_class.csv,
confusion_matrix.csv/.png, scores.npy) plus probe.json (chosen l2, cross-validated top-1) and
classifier.npz (weight, bias on raw features). See ``tsn.training.linear_probe``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tsn.cli import add_config_args, add_device_arg, add_progress_arg, add_view_args, positive_float, run_main
from tsn.config import load_config
from tsn.build import build_class_names
from tsn.training.build import run_linear_probe
from tsn.evaluation.testing import format_per_class_table
from tsn.training.trainer import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder for the report files")
    parser.add_argument("--train-list", type=Path, help="list to fit on (default: data.train_list)")
    parser.add_argument("--test-list", type=Path, help="list to score (default: data.test_list)")
    parser.add_argument("--checkpoint", type=Path, help="probe a trained TSN's backbone (default: ImageNet weights)")
    parser.add_argument("--l2", type=positive_float, help="L2 strength (default: chosen by cross-validation)")
    add_view_args(parser)
    parser.add_argument("--cache-dir", type=Path, help="feature cache (default: OUT/cache)")
    add_device_arg(parser)
    add_progress_arg(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    cfg = load_config(args.config, args.opt)  # a missing file is a ConfigError naming it
    setup_logging(None, True)
    result = run_linear_probe(cfg, args.out, train_list=args.train_list, test_list=args.test_list,
                              checkpoint=args.checkpoint, l2=args.l2, num_clips=args.num_clips, crops=args.crops,
                              device=args.device, cache_dir=args.cache_dir, progress=not args.no_progress)
    print(format_per_class_table(result.report, build_class_names(cfg)))
    print(f"l2 {result.fit.l2:g}; report written to {args.out}")


if __name__ == "__main__":
    run_main(main)
