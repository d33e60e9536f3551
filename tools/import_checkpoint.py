"""Make a model-zoo checkpoint (mmaction2 1.x TSN/TSM, the TSM repository, tsn-pytorch; ResNet backbones) a
checkpoint of this project, which tools/test.py, predict.py, export.py and extract_features.py then run as
they run a trained one.

    python tools/import_checkpoint.py ZOO.pth --classes kinetics400_classes.txt --out-file work/k400_tsm.pth
                                      [--config C] [--opt data.num_segments=8] [--pretrained-format auto]

The network (ResNet depth, temporal shift) is read from the file's keys; the class names, one a line in the
order of the classifier's outputs, come from --classes (zoo files carry none); --config gives the rest (data
and test settings; default: the defaults). Nothing is downloaded: fetch the file by hand (README).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tsn.apps.zoo_import import imported_checkpoint, read_zoo_checkpoint, zoo_config
from tsn.checkpoint import save_checkpoint
from tsn.cli import add_config_args, run_main
from tsn.config import Config, load_config, save_config
from tsn.data.lists import read_class_names
from tsn.models.zoo import ZOO_FORMATS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("zoo_file", type=Path, help="the model-zoo checkpoint (.pth)")
    parser.add_argument("--classes", type=Path, required=True, help="class names, one a line, line i = output i")
    parser.add_argument("--out-file", type=Path, required=True, help="the checkpoint to write")
    parser.add_argument("--pretrained-format", choices=("auto", *ZOO_FORMATS), default="auto",
                        help="the file's layout, as model.pretrained_format (default: recognised from its keys)")
    add_config_args(parser, required=False, what="YAML config for the data and test settings")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    weights = read_zoo_checkpoint(args.zoo_file, args.pretrained_format)
    base = load_config(args.config) if args.config is not None else Config()
    cfg = zoo_config(base, weights, args.zoo_file, args.classes, args.opt)
    state = imported_checkpoint(cfg, weights, read_class_names(args.classes), str(args.zoo_file))
    save_checkpoint(state, args.out_file, keep_previous=False)
    save_config(cfg, args.out_file.with_suffix(".yaml"))  # the --config of tools/test.py, as a run's config.yaml
    model = cfg.model
    print(f"{args.out_file} (config {args.out_file.with_suffix('.yaml')}): {model.backbone} "
          f"{'TSM' if model.temporal == 'tsm' else 'TSN'} ({weights.format}), {len(state['class_names'])} classes, "
          f"{cfg.data.num_segments} segments")
    return 0


if __name__ == "__main__":
    run_main(main)
