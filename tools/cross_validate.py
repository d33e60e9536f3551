"""Cross-validate a training recipe: train and test every fold, then the per-fold table with mean and std.

    # a data set's own folds (train and test list of each fold, paths relative to data.root)
    python tools/cross_validate.py --config C --work-dir W --fold fold1_train.txt fold1_test.txt \\
        --fold fold2_train.txt fold2_test.txt [--probe] [--opt section.key=value ...]
    # one list cut into K stratified, seeded folds; --group keeps videos whose paths share the
    # regex's first group (e.g. an actor or a source video) in one fold
    python tools/cross_validate.py --config C --work-dir W --list all.txt --folds 5 [--seed 0] \\
        [--group '_g(\\d+)_']

Each fold trains on its train list (the test list is validated once, after the last epoch: nothing is
selected on it) and tests the last checkpoint with the config's test views. ``--probe`` also runs the
linear probe on each fold. Writes W/fold<i>/ (run, test/, probe/), W/folds/ (generated lists) and
W/cv.json. See ``tsn.apps.crossval``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tsn.cli import UsageError, add_config_args, add_device_arg, add_progress_arg, int_at_least, run_main
from tsn.config import load_config, resolve_path
from tsn.apps.crossval import format_table, run_cross_validation, split_list


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--work-dir", type=Path, required=True, help="folder for the folds' runs and cv.json")
    parser.add_argument("--fold", nargs=2, action="append", type=Path, metavar=("TRAIN", "TEST"),
                        help="one fold's train and test list (repeat for every fold)")
    parser.add_argument("--list", type=Path, help="one list to cut into --folds folds")
    parser.add_argument("--folds", type=int_at_least(2), help="number of folds to cut --list into")
    parser.add_argument("--group", help="regex on the path; videos with the same first group stay in one fold")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    parser.add_argument("--probe", action="store_true", help="also run the linear probe on every fold")
    add_device_arg(parser)
    add_progress_arg(parser)
    return parser


def parse_args() -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args()
    if (args.fold is None) == (args.list is None):
        parser.error("give either --fold TRAIN TEST (repeated) or --list with --folds")
    if args.list is not None and args.folds is None:
        parser.error("--list needs --folds K")
    if args.fold is not None and (args.folds is not None or args.group is not None):
        parser.error("--folds and --group go with --list, not with --fold")
    return args


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.opt)  # a missing file is a ConfigError naming it
    if args.fold is not None:
        folds = [(resolve_path(cfg.data, train), resolve_path(cfg.data, test)) for train, test in args.fold]
        if len(folds) < 2:
            raise UsageError("--fold: cross-validation needs at least 2 folds")
    else:
        folds = split_list(cfg, resolve_path(cfg.data, args.list), args.folds, args.seed, args.group,
                           args.work_dir / "folds")
    result = run_cross_validation(cfg, folds, args.work_dir, probe=args.probe, device=args.device,
                                  progress=not args.no_progress)
    print(format_table(result))
    print(f"summary written to {args.work_dir / 'cv.json'}")


if __name__ == "__main__":
    run_main(main)
