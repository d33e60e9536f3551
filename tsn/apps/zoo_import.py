"""A model-zoo checkpoint (mmaction2 1.x, the TSM repository, tsn-pytorch) made this project's checkpoint: the
network its keys describe (``tsn.models.zoo``), its weights, a config and the class names a user gives (zoo files
carry none), so that every tool that takes a ``--checkpoint`` (test, predict, export, features) runs it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tsn.build import build_tsn
from tsn.config import Config, config_from_dict
from tsn.models.weights import read_weights_file
from tsn.models.zoo import (
    ZooCheckpointError,
    ZooWeights,
    load_zoo_weights,
    resnet_name,
    to_tsn_names,
    zoo_format,
)


def read_zoo_checkpoint(path: Path, fmt: str = "auto") -> ZooWeights:
    """The zoo checkpoint at ``path`` in this project's names; ``fmt`` "auto" recognises its layout, and a file of
    no zoo layout is a ``ZooCheckpointError``."""
    try:
        state, meta = read_weights_file(path)
    except (OSError, ValueError) as error:  # missing, unreadable, or not a mapping of tensors
        raise ZooCheckpointError(str(error)) from None
    found = zoo_format(state)
    if fmt == "auto" and found is None:
        raise ZooCheckpointError(f"{path}: not a checkpoint of mmaction2, the TSM repository or tsn-pytorch (first "
                                 f"key: {next(iter(state), 'none')})")
    return to_tsn_names(state, found if fmt == "auto" else fmt, str(path), meta)


def zoo_config(base: Config, weights: ZooWeights, path: Path, classes: Path, overrides: Sequence[str] = ()) -> Config:
    """``base`` with the network of ``weights`` (the ResNet depth, TSM or not, a GAP head, the average consensus
    of both codebases; the segments and ``shift_div`` an mmaction2 file was trained with), the zoo file as
    ``model.pretrained`` and ``classes`` as ``data.classes``; then ``overrides`` (e.g. ``data.num_segments=8``)."""
    name = resnet_name(weights.backbone)
    if name is None:
        raise ZooCheckpointError(f"{path}: its backbone is not a ResNet of 18, 34, 50, 101 or 152 layers")
    raw = base.to_dict()
    raw["model"].update(backbone=name, temporal="tsm" if weights.shifted else "none", head="gap", consensus="avg",
                        shift_direction="bidirectional",  # as both codebases shift
                        pretrained=str(path.resolve()), pretrained_format=weights.format)
    raw["data"]["classes"] = str(classes.resolve())
    # as trained, where the file's saved config says (mmaction2's); overrides may still change them
    raw["data"]["num_segments"] = weights.trained_with.get("num_segments", raw["data"]["num_segments"])
    raw["model"]["shift_div"] = weights.trained_with.get("shift_div", raw["model"]["shift_div"])
    return config_from_dict(raw, overrides)


def imported_checkpoint(cfg: Config, weights: ZooWeights, class_names: Sequence[str], label: str) -> dict[str, Any]:
    """The checkpoint (``model``, ``config``, ``class_names``) of the whole zoo model, classifier included, that
    ``load_trained`` reads; a classifier of another number of classes than ``class_names`` is a
    ``ZooCheckpointError``."""
    if weights.num_classes != len(class_names):
        have = "no classifier" if weights.num_classes is None else f"a classifier of {weights.num_classes} classes"
        raise ZooCheckpointError(f"{label}: has {have}, and the class file names {len(class_names)}")
    model = build_tsn(cfg, len(class_names), load_pretrained=False)
    load_zoo_weights(model, weights, label, whole_model=True)
    return {"model": model.state_dict(), "config": cfg.to_dict(), "class_names": list(class_names),
            "imported_from": label}
