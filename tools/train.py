"""Train a TSN.

    python tools/train.py                                   # the embedded demo (synthetic data, CPU)
    python tools/train.py --config C --work-dir W [--opt section.key=value ...] [--resume]
    torchrun --nproc_per_node N tools/train.py --config C --work-dir W   # DDP, one process per GPU
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tsn.cli import add_config_args, add_device_arg, add_progress_arg, run_main
from tsn.config import load_config
from tsn.apps.demo import run_demo
from tsn.training.build import train

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, required=False, what="YAML config (omit, with --work-dir, for the demo)")
    parser.add_argument("--work-dir", type=Path, help="folder for checkpoints, logs and config.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from WORK_DIR/latest.pth")
    add_device_arg(parser)
    add_progress_arg(parser)
    return parser


def parse_args() -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args()
    if args.config is not None and args.work_dir is None:
        parser.error("--work-dir is required with --config")
    if args.resume and args.config is None:
        parser.error("--resume needs --config and --work-dir")
    return args


def main() -> None:
    args = parse_args()
    if args.config is None:
        run_demo(REPO / "configs" / "demo.yaml", args.work_dir or REPO / "work_dirs" / "demo", args.opt, args.device)
        return
    if not args.config.is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file")
    cfg = load_config(args.config, args.opt)
    result = train(cfg, args.work_dir, resume=args.resume, device=args.device, progress=not args.no_progress)
    print(f"best val top1 {result.best_top1:.4f}; checkpoints in {result.work_dir}")


if __name__ == "__main__":
    run_main(main)
