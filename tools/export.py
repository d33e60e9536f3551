"""Export a trained TSN to ONNX or TorchScript: uint8 frames (B, T, C, H, W) in, class probabilities out.

    python tools/export.py --checkpoint P --format onnx|torchscript --out-file F [--check-video V ...]
    python tools/export.py --checkpoint P --format onnx --stream --out-file F   # per-frame graph of a causal TSM

Normalisation, consensus and softmax are inside the file; F.json beside it gives the input shape, the
class names and the frame sampling and crop the model expects. Before the file is put in place it is
run (onnxruntime for ONNX) against PyTorch on random frames and on real clips (--check-video, default
the first videos of the config's test list where it exists) and the largest differences are printed;
above --tolerance nothing is written and the exit status is 2. ONNX needs ``pip install 'tsn[export]'``.

--stream writes instead the per-frame graph of a causal TSM (model.shift_direction: causal) or a TSN, for
tools/predict.py --stream --model F: a frame and the shifted channels of the previous frame in, the frame's
and the window's scores and the new shifted channels out; it is checked against the PyTorch recognizer on
a sequence of random frames.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tsn.apps.export import DEFAULT_CHECK_VIDEOS, DEFAULT_TOLERANCE, FORMATS, check_clips, export, export_stream
from tsn.cli import UsageError, add_config_args, run_main
from tsn.config import load_config
from tsn.evaluation.inference import load_trained


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint of tools/train.py")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out-file", type=Path, required=True, help="the file to write (e.g. model.onnx, model.pt)")
    add_config_args(parser, required=False, what="YAML config replacing the checkpoint's own")
    parser.add_argument("--check-video", type=Path, action="append", default=[], metavar="VIDEO",
                        help="a real video to compare the outputs on (repeatable; default: the first "
                             f"{DEFAULT_CHECK_VIDEOS} of data.test_list where it exists)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest allowed difference of probabilities (default: %(default)g)")
    parser.add_argument("--stream", action="store_true",
                        help="the per-frame graph of a causal TSM, for tools/predict.py --stream (ONNX)")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    config = load_config(args.config, args.opt) if args.config is not None else None
    trained = load_trained(args.checkpoint, config, "cpu", overrides=() if config is not None else args.opt)
    if args.stream:
        if args.format != "onnx":
            raise UsageError("--stream writes an ONNX graph: --format onnx")
        stream = export_stream(trained, args.out_file, args.tolerance)
        print(f"largest difference to PyTorch: {stream.difference:.3g} over a sequence of random frames")
        print(f"wrote {stream.path}: a frame and {len(stream.cache_shapes)} caches in, scores and caches out; "
              f"described in {stream.path}.json")
        return 0
    clips = check_clips(trained, args.check_video)
    report = export(trained, args.format, args.out_file, clips, args.tolerance)
    print(f"largest difference to PyTorch: {report.random_difference:.3g} on random frames (batches of 1 and 3)")
    if report.real_difference is None:
        print("no real video to check on: give --check-video", file=sys.stderr)
    else:
        print(f"largest difference to PyTorch: {report.real_difference:.3g} on {len(clips)} real clip(s)")
    spec = report.spec
    print(f"wrote {report.path}: uint8 frames (batch, {spec.frames}, {spec.channels}, {spec.size}, {spec.size}) -> "
          f"probabilities (batch, {len(trained.class_names)}); described in {report.path}.json")
    return 0


if __name__ == "__main__":
    run_main(main)
