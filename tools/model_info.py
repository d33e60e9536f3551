"""Print a Keras-like layer summary of a backbone, or of a whole TSN with --num-classes.

    python tools/model_info.py --backbone resnet50
    python tools/model_info.py --backbone efficientnet_lite0 --num-classes 101 --num-segments 3 --head bilinear
    python tools/model_info.py --backbone efficientnet_lite2    # at its spec's 260 px

Weights are not loaded (the shapes and counts do not depend on them).
"""

from __future__ import annotations

import argparse

import torch

from tsn.cli import int_at_least, run_main
from tsn.models import BACKBONE_NAMES, DEFAULT_BACKBONE, HEAD_TYPES, build_backbone, build_model, summarize


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"{', '.join(BACKBONE_NAMES)} or timm:<name>")
    parser.add_argument("--num-classes", type=int_at_least(1),
                        help="summarise a TSN with this many classes (else the backbone)")
    parser.add_argument("--input-size", type=int_at_least(1), help="square input side (default: the backbone's)")
    parser.add_argument("--num-segments", type=int_at_least(1), default=1, help="TSN segments (with --num-classes)")
    parser.add_argument("--head", choices=HEAD_TYPES, default="gap", help="TSN head (with --num-classes)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.num_classes is None:
            model, spec = build_backbone(args.backbone, pretrained=False)
        else:
            model = build_model(
                backbone=args.backbone,
                pretrained=False,
                head=args.head,
                num_classes=args.num_classes,
                num_segments=args.num_segments,
            )
            spec = model.spec
    except ValueError as exc:
        parser.error(str(exc))  # one line, exit status 2
    size = args.input_size or spec.input_size
    shape = (1, 3, size, size) if args.num_classes is None else (1, args.num_segments, 3, size, size)
    print(summarize(model, torch.zeros(shape)).format())
    return 0


if __name__ == "__main__":
    run_main(main)
