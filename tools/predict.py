"""Predict the actions in videos with a trained checkpoint: top classes per video, and per window of a long one.

    python tools/predict.py --checkpoint P [VIDEO_OR_DIR ...] [--list L --src ROOT] [--top-k 5]
                            [--window SECONDS [--stride SECONDS]] [--json | --csv] [--out-video PATH]
    python tools/predict.py --model model.onnx VIDEO ...     # a file of tools/export.py, on onnxruntime
    python tools/predict.py --checkpoint P --stream SOURCE [--realtime] [--stream-window N] [--stream-stride N]
                            [--print-every N] [--json]      # a file, camera (0, /dev/video0) or rtsp:// / http:// URL

A folder stands for every video under it. The checkpoint carries the network, its config and its
class names; --config and --opt only change them. An exported file (--model) carries its config and class
names too and runs on onnxruntime (CUDA with --device cuda where its provider is installed, else the
CPU) or TorchScript; the line "running ... with ..." on stderr says which. Results go to stdout (a table, JSON lines or CSV),
failures to stderr as "failed: <video>: <reason>". Exit status: 0; 1 when every video failed, or
with --strict when any did; 2 for bad arguments.

--stream scores a live source one frame at a time with a causal TSM (model.temporal: tsm,
model.shift_direction: causal) or a TSN, from its checkpoint or its per-frame graph (tools/export.py
--stream, then --model): every --stream-stride frames (default: the training clips' time between
segments), the window consensus of the last --stream-window scored frames, printed every --print-every
scored frames with the frame's time and the latency from its arrival to its scores. --realtime plays a
file at its own rate and drops the frames the model cannot keep up with; cameras and network streams
always run live. Ctrl-C stops it; a summary goes to stderr (exit 1 when the stream broke).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tsn.cli import (UsageError, add_config_args, add_device_arg, add_progress_arg, add_view_args, int_at_least,
                     positive_float, run_main)
from tsn.config import load_config
from tsn.data.lists import read_video_list
from tsn.runtime.distributed import init_distributed
from tsn.apps.predict import (CSV_HEADER, Predictor, format_csv_rows, format_json_line, format_table,
                                write_labelled_video)
from tsn.apps.stream import format_update, load_stream_model, run_stream, segment_stride
from tsn.io import VideoReadError
from tsn.io.live import LiveSourceError, open_live
from tsn.jobs.extract import VIDEO_EXTENSIONS, find_videos


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="*", type=Path, metavar="VIDEO_OR_DIR", help="videos, or folders of them")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="checkpoint of tools/train.py")
    model.add_argument("--model", type=Path, help="model.onnx (onnxruntime) or model.pt (TorchScript) of "
                                                   "tools/export.py: several times faster on a CPU")
    add_config_args(parser, required=False, what="YAML config replacing the checkpoint's own")
    parser.add_argument("--list", type=Path, help="video list 'rel/path.ext LABEL' (paths relative to --src)")
    parser.add_argument("--src", type=Path, default=Path("."), help="root of the --list paths (default: .)")
    parser.add_argument("--top-k", type=int_at_least(1), default=5, help="classes shown per video and window")
    parser.add_argument("--window", type=positive_float, help="also score windows of this many seconds")
    parser.add_argument("--stride", type=positive_float, help="seconds from one window to the next "
                                                                "(default: --window, no overlap)")
    add_view_args(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object per video (JSON lines)")
    output.add_argument("--csv", action="store_true", help="CSV, one row per class shown")
    parser.add_argument("--out-video", type=Path, help="write a copy of the video with the current top label "
                                                       "drawn on it: a file (one video) or a folder")
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


def run_stream_mode(args: argparse.Namespace, device) -> int:
    """--stream: score the source frame by frame and print the window's top classes (``tsn.apps.stream``)."""
    loaded = load_stream_model(args.model or args.checkpoint, args.model is not None, args.stream_window, device)
    source = open_live(args.stream)
    stride = args.stream_stride or segment_stride(source.fps, loaded.segment_seconds)
    if not args.stream_stride and source.fps <= 0:
        print(f"warning: {args.stream} does not say its frame rate: every frame is scored; give --stream-stride N "
              f"(frames between the segments the model was trained on)", file=sys.stderr)
    print(f"running {args.model or args.checkpoint} with {loaded.runtime} on {args.stream}: every {stride} frame(s), "
          f"window {loaded.recognizer.window}", file=sys.stderr)

    def show(update) -> None:
        if update.scores.index % args.print_every == 0:
            print(format_update(update, loaded.class_names, args.top_k, args.json), flush=True)

    try:
        summary = run_stream(loaded.recognizer, source, stride, args.realtime, show)
    except LiveSourceError as error:
        print(f"stream broken: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary.as_dict()), file=sys.stderr)
    return 0


def collect_videos(paths: list[Path], list_file: Path | None, src: Path) -> list[tuple[Path, str]]:
    """The videos to predict, in order: ``(path, name for the output copy)``; a folder gives every video under it."""
    videos = []
    for path in paths:
        if path.is_dir():
            videos += [(path / job.video, job.video) for job in find_videos(path)[0]]
        else:
            videos.append((path, path.name))
    if list_file is not None:
        videos += [(src / record.path, record.path) for record in read_video_list(list_file)]
    return videos


def copy_path(out_video: Path, name: str, count: int) -> Path:
    """Where the labelled copy of the video ``name`` goes: ``out_video`` itself when it names an .mp4 file
    (one video only), else ``out_video/<name>`` with an ``.mp4`` suffix."""
    if out_video.suffix.lower() in VIDEO_EXTENSIONS:
        if out_video.suffix.lower() != ".mp4":
            raise UsageError(f"--out-video {out_video}: the copy is an MP4 file, name it .mp4 (or give a folder)")
        if count > 1:
            raise UsageError(f"--out-video {out_video} is one file, but there are {count} videos: give a folder")
        return out_video
    return out_video / Path(name).with_suffix(".mp4")


def check_copy_paths(out_video: Path, videos: list[tuple[Path, str]]) -> None:
    """UsageError unless every video's labelled copy has its own path, inside ``out_video`` when that is a
    folder, and no copy would replace a video (its own or another one given)."""
    paths = [copy_path(out_video, name, len(videos)).resolve() for _, name in videos]
    sources = {path.resolve() for path, _ in videos}
    root = out_video.resolve()
    seen: dict[Path, str] = {}
    for (_, name), path in zip(videos, paths):
        if path in sources:
            raise UsageError(f"--out-video: the copy of {name} would replace the video {path}")
        if path != root and root not in path.parents:
            raise UsageError(f"--out-video: the copy of {name} would land outside {out_video}")
        if path in seen:
            raise UsageError(f"--out-video: {seen[path]} and {name} would both be copied to {path}")
        seen[path] = name


def main() -> int:
    args = build_parser().parse_args()
    if args.stride is not None and args.window is None:
        raise UsageError("--stride needs --window")
    if args.stride is not None and args.stride > args.window:
        raise UsageError(f"--stride {args.stride} is longer than --window {args.window}: frames between windows "
                         "would never be seen")
    if args.stream is not None:
        if args.videos or args.list or args.window or args.out_video or args.csv:
            raise UsageError("--stream takes no videos, --list, --window, --out-video or --csv")
        if args.config is not None or args.opt:
            raise UsageError("--stream runs the model as it was trained: no --config or --opt")
        return run_stream_mode(args, init_distributed(args.device).device)
    if args.realtime or args.stream_window or args.stream_stride:
        raise UsageError("--realtime, --stream-window and --stream-stride need --stream")
    videos = collect_videos(args.videos, args.list, args.src)
    if not videos:
        raise UsageError("no videos: give VIDEO_OR_DIR arguments or --list")
    if args.out_video is not None:
        check_copy_paths(args.out_video, videos)
    device = init_distributed(args.device).device
    if args.model is not None:
        if args.config is not None or args.opt:
            raise UsageError("--model carries its own config: --config and --opt apply to --checkpoint only")
        predictor = Predictor.from_exported(args.model, device, args.num_clips, args.crops)
    else:
        config = load_config(args.config, args.opt) if args.config is not None else None
        predictor = Predictor.from_checkpoint(args.checkpoint, config, device, args.num_clips, args.crops,
                                              overrides=() if config is not None else args.opt)
    print(f"running {args.model or args.checkpoint} with {predictor.runtime}", file=sys.stderr)
    failed = 0
    if args.csv:
        print(",".join(CSV_HEADER))
    from tqdm import tqdm

    for path, name in tqdm(videos, desc="predict", unit="video", disable=args.no_progress, file=sys.stderr):
        try:
            prediction = predictor.predict(path, args.top_k, args.window, args.stride)
            if args.out_video is not None:
                write_labelled_video(prediction, path, copy_path(args.out_video, name, len(videos)))
        except (VideoReadError, OSError) as error:
            reason = error.reason if isinstance(error, VideoReadError) else str(error)
            tqdm.write(f"failed: {path}: {reason}", file=sys.stderr)
            failed += 1
            continue
        text = format_json_line(prediction) if args.json else format_csv_rows(prediction).rstrip("\n") \
            if args.csv else format_table(prediction)
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()
    if failed:
        print(f"{failed} of {len(videos)} videos failed", file=sys.stderr)
    return 1 if failed == len(videos) or (args.strict and failed) else 0


if __name__ == "__main__":
    run_main(main)
