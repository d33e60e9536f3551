"""Export a trained TSN to ONNX or TorchScript: uint8 frames (B, T, C, H, W) in, class probabilities out.

    python tools/export.py --checkpoint P --format onnx|torchscript --out F [--check-video V ...]
    python tools/export.py --checkpoint P --format onnx --stream --out F     # per-frame graph of a causal TSM

Normalisation, consensus and softmax are inside the file; F.json beside it gives the input shape, the
class names and the frame sampling and crop the model expects. Before the file is put in place it is
run (onnxruntime for ONNX) against PyTorch on random frames and on real clips (--check-video, default
the first videos of the config's test list where it exists) and the largest differences are printed;
above --tolerance nothing is written and the exit status is 1. ONNX needs ``pip install 'tsn[export]'``.

--stream writes instead the per-frame graph of a causal TSM (model.shift_direction: causal) or a TSN, for
tools/predict.py --stream --model F: a frame and the shifted channels of the previous frame in, the frame's
and the window's scores and the new shifted channels out; it is checked against the PyTorch recognizer on
a sequence of random frames.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tsn.apps.export import DEFAULT_TOLERANCE, FORMATS, export, export_stream
from tsn.apps.predict import single_video_dataset
from tsn.cli import UsageError, add_config_args, run_main
from tsn.config import Config, load_config, resolve_path
from tsn.data.lists import read_list
from tsn.evaluation.deployed import ExportError
from tsn.evaluation.inference import load_trained

DEFAULT_CHECK_VIDEOS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint of tools/train.py")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the file to write (e.g. model.onnx, model.pt)")
    add_config_args(parser, required=False, what="YAML config replacing the checkpoint's own")
    parser.add_argument("--check-video", type=Path, action="append", default=[], metavar="VIDEO",
                        help="a real video to compare the outputs on (repeatable; default: the first "
                             f"{DEFAULT_CHECK_VIDEOS} of data.test_list where it exists)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest allowed difference of probabilities (default: %(default)g)")
    parser.add_argument("--stream", action="store_true",
                        help="the per-frame graph of a causal TSM, for tools/predict.py --stream (ONNX)")
    return parser


def check_videos(config: Config, given: list[Path]) -> list[Path]:
    """The videos to check on: those given, else the first of the config's test list where it exists."""
    if given:
        return given
    test_list = resolve_path(config.data, config.data.test_list)
    if not test_list.is_file():
        return []
    records = read_list(test_list, "rawframes" if config.data.modality == "flow" else config.data.format)
    return [resolve_path(config.data, record.path) for record in records[:DEFAULT_CHECK_VIDEOS]]


def main() -> int:
    args = build_parser().parse_args()
    config = load_config(args.config, args.opt) if args.config is not None else None
    trained = load_trained(args.checkpoint, config, "cpu", overrides=() if config is not None else args.opt)
    if args.stream:
        if args.format != "onnx":
            raise UsageError("--stream writes an ONNX graph: --format onnx")
        try:
            stream = export_stream(trained, args.out, args.tolerance)
        except ExportError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"largest difference to PyTorch: {stream.difference:.3g} over a sequence of random frames")
        print(f"wrote {stream.path}: a frame and {len(stream.cache_shapes)} caches in, scores and caches out; "
              f"described in {stream.path}.json")
        return 0
    videos = check_videos(trained.config, args.check_video)
    rng = np.random.default_rng(0)
    clips = [single_video_dataset(trained.config, video, 1, 1, trained.class_names).load(0, rng)[0]  # (T, C, H, W)
             for video in videos]
    try:
        report = export(trained, args.format, args.out, clips, args.tolerance)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
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
