"""Predict the actions in videos with a trained checkpoint: top classes per video, and per window of a long one.

    python tools/predict.py --checkpoint P [VIDEO_OR_DIR ...] [--list L --src ROOT] [--top-k 5] [--html PAGE]
                            [--window SECONDS [--stride SECONDS]] [--format text|json|csv] [--out-video PATH]
    python tools/predict.py --model model.onnx VIDEO ...     # a file of tools/export.py, on onnxruntime
    python tools/predict.py --checkpoint P --stream SOURCE [--realtime] [--stream-window N] [--stream-stride N]
                            [--print-every N] [--format json]  # a file, camera (0, /dev/video0) or rtsp:// URL

A folder stands for every video under it; --html writes one self-contained page (the frames the model was given, the
windows' timeline). The checkpoint carries the network, its config and its class names; --config and --opt only change
them. An exported file (--model) carries them too and runs on onnxruntime (CUDA with --device cuda where its provider
is installed) or TorchScript; "running ... with ..." on stderr says which. Results go to stdout (--format), failures to
stderr as "failed: <video>: <reason>". Exit status: 0; 1 when every video failed (--strict: any); 2 for bad arguments.

--stream scores a live source one frame at a time with a causal TSM (model.temporal: tsm, model.shift_direction:
causal) or a TSN, from its checkpoint or its per-frame graph (tools/export.py --stream, then --model): every
--stream-stride frames (default: the training clips' time between segments), the window consensus of the last
--stream-window scored frames, printed every --print-every scored frames with the frame's time and the latency from its
arrival to its scores. --realtime plays a file at its own rate and drops the frames the model cannot keep up with;
cameras and network streams always run live. Ctrl-C stops it; a summary goes to stderr (exit 1 when the stream broke).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tsn.apps.predict import OUTPUT_FORMATS, Predictor, check_copy_paths, collect_videos, predict_videos
from tsn.apps.stream import print_stream
from tsn.cli import (UsageError, add_config_args, add_device_arg, add_progress_arg, add_view_args, int_at_least,
                     positive_float, run_main)
from tsn.config import load_config
from tsn.runtime.distributed import init_distributed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="*", type=Path, metavar="VIDEO_OR_DIR", help="videos, or folders of them")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="checkpoint of tools/train.py")
    model.add_argument("--model", type=Path, help="tools/export.py's model.onnx (onnxruntime) or .pt (TorchScript)")
    add_config_args(parser, required=False, what="YAML config replacing the checkpoint's own")
    parser.add_argument("--list", type=Path, help="video list 'rel/path.ext LABEL' (paths relative to --src)")
    parser.add_argument("--src", type=Path, default=Path("."), help="root of the --list paths (default: .)")
    parser.add_argument("--top-k", type=int_at_least(1), default=5, help="classes shown per video and window")
    parser.add_argument("--window", type=positive_float, help="also score windows of this many seconds")
    parser.add_argument("--stride", type=positive_float, help="seconds between windows (default: --window, no overlap)")
    add_view_args(parser)
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="text", help="a table, JSON lines or CSV rows")
    parser.add_argument("--out-video", type=Path, help="copy with the top label drawn: a file (one video) or a folder")
    parser.add_argument("--html", type=Path, help="also write this self-contained page of the predictions")
    add_device_arg(parser)
    add_progress_arg(parser)
    parser.add_argument("--strict", action="store_true", help="exit 1 when any video failed")
    live = parser.add_argument_group("live streams")
    live.add_argument("--stream", metavar="SOURCE", help="score a video file, camera or stream URL frame by frame")
    live.add_argument("--realtime", action="store_true", help="play a --stream file at its own frame rate")
    live.add_argument("--stream-window", type=int_at_least(1), help="scored frames in the window consensus "
                                                                     "(default: the model's segments)")
    live.add_argument("--stream-stride", type=int_at_least(1), help="source frames from one scored frame to the "
                                                                     "next (default: one per training segment)")
    live.add_argument("--print-every", type=int_at_least(1), default=1, help="print every N scored frames")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    if args.stride is not None and (args.window is None or args.stride > args.window):
        raise UsageError("--stride needs --window" if args.window is None else f"--stride {args.stride} is longer "
                         f"than --window {args.window}: frames between windows would never be seen")
    if args.stream is not None:
        if args.videos or args.list or args.window or args.out_video or args.html or args.format == "csv":
            raise UsageError("--stream takes no videos, --list, --window, --out-video, --html or --format csv")
        if args.config is not None or args.opt:
            raise UsageError("--stream runs the model as it was trained: no --config or --opt")
        return print_stream(args.model or args.checkpoint, args.model is not None, args.stream,
                            init_distributed(args.device).device, args.stream_window, args.stream_stride,
                            args.realtime, args.top_k, args.print_every, args.format == "json")
    if args.realtime or args.stream_window or args.stream_stride:
        raise UsageError("--realtime, --stream-window and --stream-stride need --stream")
    videos = collect_videos(args.videos, args.list, args.src)
    if not videos:
        raise UsageError("no videos: give VIDEO_OR_DIR arguments or --list")
    if args.out_video is not None:
        check_copy_paths(args.out_video, videos)
    device = init_distributed(args.device).device
    if args.model is not None and (args.config is not None or args.opt):
        raise UsageError("--model carries its own config: --config and --opt apply to --checkpoint only")
    config = load_config(args.config, args.opt) if args.config is not None else None
    predictor = Predictor.from_exported(args.model, device, args.num_clips, args.crops) if args.model is not None \
        else Predictor.from_checkpoint(args.checkpoint, config, device, args.num_clips, args.crops,
                                       overrides=() if config is not None else args.opt)
    print(f"running {args.model or args.checkpoint} with {predictor.runtime}", file=sys.stderr)
    failed = predict_videos(predictor, videos, args.top_k, args.window, args.stride, args.format, args.out_video,
                            not args.no_progress, args.html)
    return 1 if failed == len(videos) or (args.strict and failed) else 0

if __name__ == "__main__":
    run_main(main)
