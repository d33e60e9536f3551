"""Measure throughput: the data loader, a model's train step, a trained model's inference, or end-to-end
training. One JSON line.

    python tools/benchmark.py loader --config C [--opt KEY=VALUE ...] [--split train|val] [--clips N] [--workers W]
    python tools/benchmark.py model --backbone resnet50 [--batch-size 32] [--num-segments 8] [--amp none|bf16|fp16]
                                    [--channels-last] [--compile] [--steps N] [--input-size 224] [--temporal tsm]
    python tools/benchmark.py infer --checkpoint P [--batch-size 8] [--num-segments K] [--amp ...] [--channels-last]
                                    [--steps N]
    python tools/benchmark.py train --config C [--opt ...] [--steps N] [--workers W] [--profile DIR]
    python tools/benchmark.py deployed --model model.onnx|model.pt|best.pth [--batch-size 1] [--steps N]
    python tools/benchmark.py stream --checkpoint P | --model stream.onnx --list L --src ROOT [--strides 1 4 8]

Add --pretty for a readable table instead of JSON. See tsn/measure/benchmark.py for what is timed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tsn.cli import add_batch_size_arg, add_config_args, add_workers_arg, int_at_least, run_main
from tsn.measure.benchmark import AMP_CHOICES, format_table, model_benchmark
from tsn.measure import build as measure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pretty", action="store_true", help="a table instead of one JSON line")
    modes = parser.add_subparsers(dest="mode", required=True)
    loader = modes.add_parser("loader", parents=[common], help="clips/s through the real Dataset and DataLoader")
    train = modes.add_parser("train", parents=[common], help="training steps/s with the real loader and from memory")
    for sub in (loader, train):
        add_config_args(sub)
        add_workers_arg(sub, "loader worker processes (default: data.num_workers)", default=None, minimum=0)
        add_batch_size_arg(sub, "clips per batch (default: data.batch_size)")
    loader.add_argument("--split", choices=("train", "val"), default="train")
    loader.add_argument("--clips", type=int_at_least(0), default=0, help="clips per pass (0: the whole list)")
    loader.add_argument("--passes", type=int_at_least(2), default=3,
                        help="reads of the same clips: the first is the warm-up, the median of the rest counts")
    train.add_argument("--steps", type=int_at_least(1), default=20, help="timed steps, each way")
    train.add_argument("--profile", metavar="DIR", help="write a torch.profiler trace of 3 more steps here")
    model = modes.add_parser("model", parents=[common], help="train-step images/s of a TSN on the current device")
    model.add_argument("--backbone", required=True)
    add_batch_size_arg(model, "clips per step", default=32)
    model.add_argument("--num-segments", type=int_at_least(1), default=8, help="segments (frames) per clip")
    model.add_argument("--compile", action="store_true")
    model.add_argument("--input-size", type=int_at_least(1), default=224)
    model.add_argument("--temporal", choices=("none", "tsm"), default="none", help="as model.temporal")
    infer = modes.add_parser("infer", parents=[common], help="forward-only images/s of a trained checkpoint")
    infer.add_argument("--checkpoint", type=Path, required=True, help="checkpoint of tools/train.py")
    add_batch_size_arg(infer, "clips per forward", default=8)
    infer.add_argument("--num-segments", type=int_at_least(1),
                       help="segments per clip (default: the run's data.num_segments)")
    for sub in (model, infer):
        sub.add_argument("--amp", choices=AMP_CHOICES, default="none")
        sub.add_argument("--channels-last", action="store_true")
    deployed = modes.add_parser("deployed", parents=[common],
                                help="CPU clips/s of the whole deployed TSN: an exported file or a checkpoint (eager)")
    deployed.add_argument("--model", type=Path, required=True,
                          help="model.onnx or model.pt of tools/export.py, or a checkpoint (.pth: PyTorch eager)")
    add_batch_size_arg(deployed, "clips per call", default=1)
    for sub in (model, infer, deployed):
        sub.add_argument("--steps", type=int_at_least(1), default=10)
    stream = modes.add_parser("stream", parents=[common],
                              help="top-1 of a causal model streamed over a list's videos at several strides")
    weights = stream.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, help="checkpoint of tools/train.py (PyTorch)")
    weights.add_argument("--model", type=Path, help="per-frame graph of tools/export.py --stream (onnxruntime)")
    stream.add_argument("--list", type=Path, required=True, help="video list 'rel/path.ext LABEL'")
    stream.add_argument("--src", type=Path, default=Path("."), help="root of the list's paths")
    stream.add_argument("--strides", type=int_at_least(1), nargs="+", default=[1, 4, 8, 16],
                        help="source frames from one scored frame to the next")
    stream.add_argument("--stream-window", type=int_at_least(1), help="frames in the window (default: segments)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.mode == "stream":
        rows = measure.stream_benchmark(args.checkpoint, args.model, args.stream_window, args.list, args.src,
                                        args.strides)
    elif args.mode == "model":
        rows = [model_benchmark(args.backbone, args.batch_size, args.num_segments, args.amp, args.channels_last,
                                args.compile, args.steps, args.input_size, temporal=args.temporal)]
    elif args.mode == "deployed":
        rows = [measure.deployed_benchmark(args.model, args.batch_size, args.steps)]
    elif args.mode == "infer":
        rows = [measure.inference_benchmark(args.checkpoint, args.batch_size, args.num_segments, args.amp,
                                            args.channels_last, args.steps)]
    else:
        cfg = measure.benchmark_config(args.config, args.opt, args.workers, args.batch_size)
        rows = [measure.loader_benchmark(cfg, args.split, args.clips, args.passes) if args.mode == "loader"
                else measure.train_benchmark(cfg, args.steps, profile_dir=args.profile)]
    print("\n".join(format_table(row) if args.pretty else json.dumps(row) for row in rows), flush=True)


if __name__ == "__main__":
    run_main(main)
