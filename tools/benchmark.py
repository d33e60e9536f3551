"""Measure throughput: the data loader, a model's train step, a trained model's inference, or end-to-end
training. One JSON line.

    python tools/benchmark.py loader --config C [--opt KEY=VALUE ...] [--split train|val] [--clips N] [--workers W]
    python tools/benchmark.py model --backbone resnet50 [--batch 32] [--segments 8] [--amp none|bf16|fp16]
                                    [--channels-last] [--compile] [--steps N] [--input-size 224]
    python tools/benchmark.py infer --checkpoint P [--batch 8] [--segments K] [--amp ...] [--channels-last] [--steps N]
    python tools/benchmark.py train --config C [--opt ...] [--steps N] [--workers W] [--profile DIR]

Add --pretty for a readable table instead of JSON. See tsn/engine/benchmark.py for what is timed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tsn.cli import int_at_least, run_main
from tsn.config import load_config
from tsn.engine.benchmark import (AMP_CHOICES, format_table, inference_benchmark, loader_benchmark, model_benchmark,
                                  train_benchmark)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pretty", action="store_true", help="a table instead of one JSON line")
    modes = parser.add_subparsers(dest="mode", required=True)
    loader = modes.add_parser("loader", parents=[common], help="clips/s through the real Dataset and DataLoader")
    train = modes.add_parser("train", parents=[common], help="training steps/s with the real loader and from memory")
    for sub in (loader, train):
        sub.add_argument("--config", type=Path, required=True, help="YAML config")
        sub.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        sub.add_argument("--workers", type=int, help="loader worker processes (default: data.num_workers)")
        sub.add_argument("--batch", type=int, help="clips per batch (default: data.batch_size)")
    loader.add_argument("--split", choices=("train", "val"), default="train")
    loader.add_argument("--clips", type=int, default=0, help="clips per pass (0: the whole list)")
    loader.add_argument("--passes", type=int, default=3,
                        help="reads of the same clips: the first is the warm-up, the median of the rest counts")
    train.add_argument("--steps", type=int, default=20, help="timed steps, each way")
    train.add_argument("--profile", metavar="DIR", help="write a torch.profiler trace of 3 more steps here")
    model = modes.add_parser("model", parents=[common], help="train-step images/s of a TSN on the current device")
    model.add_argument("--backbone", required=True)
    model.add_argument("--batch", type=int, default=32)
    model.add_argument("--segments", type=int, default=8)
    model.add_argument("--amp", choices=AMP_CHOICES, default="none")
    model.add_argument("--channels-last", action="store_true")
    model.add_argument("--compile", action="store_true")
    model.add_argument("--steps", type=int, default=10)
    model.add_argument("--input-size", type=int, default=224)
    infer = modes.add_parser("infer", parents=[common], help="forward-only images/s of a trained checkpoint")
    infer.add_argument("--checkpoint", type=Path, required=True, help="latest.pth/best.pth of tools/train.py")
    infer.add_argument("--batch", type=int_at_least(1), default=8)
    infer.add_argument("--segments", type=int_at_least(1), help="frames per clip (default: the run's num_segments)")
    infer.add_argument("--amp", choices=AMP_CHOICES, default="none")
    infer.add_argument("--channels-last", action="store_true")
    infer.add_argument("--steps", type=int_at_least(1), default=10)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.mode == "model":
        result = model_benchmark(args.backbone, args.batch, args.segments, args.amp, args.channels_last,
                                 args.compile, args.steps, args.input_size)
    elif args.mode == "infer":
        result = inference_benchmark(args.checkpoint, args.batch, args.segments, args.amp, args.channels_last,
                                     args.steps)
    else:
        overrides = list(args.opt)
        if args.workers is not None:
            overrides.append(f"data.num_workers={args.workers}")
        if args.batch is not None:
            overrides.append(f"data.batch_size={args.batch}")
        cfg = load_config(args.config, overrides)
        if args.mode == "loader":
            result = loader_benchmark(cfg, args.split, args.clips, args.passes)
        else:
            result = train_benchmark(cfg, args.steps, profile_dir=args.profile)
    print(format_table(result) if args.pretty else json.dumps(result))


if __name__ == "__main__":
    run_main(main)
