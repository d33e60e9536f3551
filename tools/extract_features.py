"""One feature vector per video (segment-averaged backbone features), and optionally its nearest neighbours.

    python tools/extract_features.py --config C --list L --out O [--checkpoint P] [--layer NAME] [--knn K]
                                     [--batch-size N] [--device auto|cpu|cuda] [--opt section.key=value ...]

Writes ``O/features.npy`` (float32 (N, D), rows in list order) and ``O/index.csv`` (row,path,label); with
``--knn K`` also ``O/neighbours.csv`` and ``O/knn.json`` (precision@K against the labels). Without
``--checkpoint`` the backbone has its ImageNet weights (``model.pretrained``). Paths inside the list are
relative to ``data.root``. See ``tsn.apps.features``. Exit status 0, or 2 for bad arguments or input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tsn.cli import add_batch_size_arg, add_config_args, add_device_arg, add_progress_arg, int_at_least, run_main
from tsn.config import ConfigError, load_config
from tsn.data.dataset import AllVideosFailedError
from tsn.data.lists import ListFormatError
from tsn.checkpoint import CheckpointError
from tsn.apps.build import run_extract
from tsn.apps.features import QUERY_BATCH
from tsn.io import VideoReadError


def build_parser() -> argparse.ArgumentParser:
    """The command line (argparse exits with status 2 on a bad flag)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(parser, what="YAML config (data and model sections)")
    parser.add_argument("--list", type=Path, required=True, help="video list 'path LABEL' (paths under data.root)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--checkpoint", type=Path, help="trained TSN checkpoint (else ImageNet weights)")
    parser.add_argument("--layer", help="named backbone layer (e.g. layer3) instead of the backbone output")
    parser.add_argument("--knn", type=int_at_least(1), metavar="K", help="write each video's K nearest neighbours")
    add_batch_size_arg(parser, "videos per batch (default: data.batch_size)")
    parser.add_argument("--knn-batch", type=int_at_least(1), default=QUERY_BATCH, help="query rows per distance block")
    add_device_arg(parser)
    add_progress_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Extract the features (and neighbours); returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.opt)
        result = run_extract(cfg, args.list, args.out, checkpoint=args.checkpoint, layer=args.layer, knn=args.knn,
                             batch_size=args.batch_size, device=args.device, query_batch=args.knn_batch,
                             progress=not args.no_progress)
    # OSError covers a missing weights file (PretrainedWeightsNotFound) and an unwritable --out
    except (ConfigError, ListFormatError, CheckpointError, VideoReadError, AllVideosFailedError, OSError,
            ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows, dim = result.features.features.shape
    print(f"features: {rows} x {dim} -> {args.out / 'features.npy'}")
    if result.features.skipped:
        print(f"{len(result.features.skipped)} video(s) unreadable (NaN rows): {args.out / 'skipped.csv'}")
    if result.knn is not None:
        print(f"precision@{args.knn}: {result.knn.precision_at_k:.4f} -> {args.out / 'neighbours.csv'}")
    return 0


if __name__ == "__main__":
    run_main(main)
