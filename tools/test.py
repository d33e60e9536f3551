"""Test a trained TSN with multi-view testing (temporal clips x spatial crops) and write the report.

    python tools/test.py --config C --checkpoint P --out O [--list L] [--num-clips N] [--crops 1|3|10] [--batch-size B]
                         [--no-progress]
    python tools/test.py --config C --model model.onnx --out O ...    # a file of tools/export.py (onnxruntime)

Writes O/metrics.json, O/per_class.csv, O/confusion_matrix.csv, O/confusion_matrix.png, O/scores.npy and
O/report.html (one self-contained page: metrics, per class, confusion, the wrong and unsure clips' frames).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tsn.cli import add_batch_size_arg, add_config_args, add_device_arg, add_progress_arg, add_view_args, run_main
from tsn.config import load_config
from tsn.build import build_class_names
from tsn.evaluation.build import run_test
from tsn.evaluation.testing import format_per_class_table
from tsn.training.trainer import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="checkpoint of tools/train.py")
    model.add_argument("--model", type=Path, help="model.onnx (onnxruntime: CUDA with --device cuda where present, "
                                                   "else CPU) or model.pt (TorchScript) of tools/export.py")
    parser.add_argument("--out", type=Path, required=True, help="folder for the report files")
    parser.add_argument("--list", type=Path, help="list to test (default: data.test_list)")
    add_view_args(parser)
    add_batch_size_arg(parser, "videos per loader batch, each with all its views (default: data.batch_size, but "
                               "at most test.clips_per_forward clips in all, at least one video)")
    add_device_arg(parser)
    add_progress_arg(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if not args.config.is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file")
    cfg = load_config(args.config, args.opt)
    setup_logging(None, True)
    report = run_test(cfg, args.checkpoint or args.model, args.out, list_file=args.list, num_clips=args.num_clips,
                      crops=args.crops, device=args.device, batch_size=args.batch_size,
                      progress=not args.no_progress, exported=args.model is not None)
    print(format_per_class_table(report, build_class_names(cfg)))
    print(f"report written to {args.out}")


if __name__ == "__main__":
    run_main(main)
