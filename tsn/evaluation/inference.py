"""The one way from a trained checkpoint to a model that infers: ``load_trained``.

Every tool that runs a trained TSN (``tools/test.py``, ``tools/predict.py``, ``tools/export.py``,
``tools/extract_features.py``, ``tools/linear_probe.py --checkpoint``, ``tools/benchmark.py infer`` and
``deployed``) goes through it,
so that all of them build the same network, load the same weights and name the same classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from tsn.config import Config, ConfigError, config_from_dict, override_config
from tsn.build import build_class_names, build_tsn, temporal_settings
from tsn.checkpoint import CheckpointError, check_trained_with, inference_weights, load_checkpoint
from tsn.models import TSN, match_module_prefix


@dataclass
class TrainedModel:
    """A trained TSN ready to infer: ``model`` in eval mode on its device, the ``class_names`` its
    outputs stand for (output ``i`` is ``class_names[i]``), and the ``config`` it was built from."""

    model: TSN
    class_names: list[str]
    config: Config
    selected_on: str | None = None  # the validation list a best.pth was chosen on (None: not chosen by validation)
    segment_seconds: float | None = None  # the training clips' median time between segments (None: not known)
    epoch: int | None = None  # the epochs the checkpoint was trained for (None: not recorded)


def load_trained(checkpoint: str | os.PathLike[str], config: Config | None = None,
                 device: torch.device | str = "cpu", overrides: Sequence[str] = ()) -> TrainedModel:
    """A checkpoint (``latest.pth``/``best.pth`` of ``tools/train.py``, or a bare state dict) -> ``TrainedModel``.

    - the network is the one ``config`` describes, by default the run's own config saved in the
      checkpoint (a bare state dict needs ``config``); a ``config`` given here must agree with the
      checkpoint's on ``model.consensus`` and ``data.modality`` (``check_trained_with``), and so must
      the ``section.key=value`` ``overrides`` applied to either;
    - no ImageNet weight file is read (``model.pretrained`` is ignored: the checkpoint fills in
      every weight), so it works with an empty torch cache;
    - the weights are ``inference_weights`` (the weight average when the run kept one), loaded
      strictly: a missing, extra or reshaped tensor is a ``CheckpointError`` naming the file (a
      ``module.`` prefix from a DDP-wrapped save is matched);
    - the class names are the checkpoint's own (saved by the trainer), else ``data.classes``'s.

    Raises ``CheckpointError`` for a checkpoint that is unreadable, lacks what is needed, does not
    fit the network or holds a saved config that is no longer valid.
    """
    path = Path(checkpoint)
    state = load_checkpoint(path)
    if config is None:
        saved = state.get("config")
        if not isinstance(saved, dict):
            raise CheckpointError(path, "holds no config (a bare state dict): pass the run's config")
        try:
            config = config_from_dict(saved, overrides)
        except ConfigError as error:
            raise CheckpointError(path, f"its saved config is not valid here: {error} (mend it with --opt, or "
                                        f"pass --config)") from None
    else:
        config = override_config(config, overrides) if overrides else config
    check_trained_with(state, path, {"model.consensus": config.model.consensus,
                                     "data.modality": config.data.modality,
                                     **temporal_settings(config)})
    class_names = _class_names(state, path, config)
    model = build_tsn(config, len(class_names), load_pretrained=False)
    weights = match_module_prefix(inference_weights(state), model)
    own = model.state_dict()
    misfits = sorted(set(own) ^ set(weights)) + [key for key in own if key in weights
                                                  and getattr(weights[key], "shape", None) != own[key].shape]
    if misfits:
        raise CheckpointError(path, f"does not fit backbone {config.model.backbone!r} with {len(class_names)} "
                                    f"classes: {len(misfits)} tensors missing, extra or of another shape "
                                    f"(first: {misfits[0]})")
    model.load_state_dict(weights, strict=True)
    model.eval()
    selected_on = state.get("selected_on")
    seconds, epoch = state.get("segment_seconds"), state.get("epoch")
    return TrainedModel(model.to(device), class_names, config, selected_on if isinstance(selected_on, str) else None,
                        float(seconds) if isinstance(seconds, (int, float)) else None,
                        epoch if isinstance(epoch, int) else None)


def _class_names(state: dict, path: Path, config: Config) -> list[str]:
    """The checkpoint's class names (``state["class_names"]``), else those of ``data.classes``."""
    names = state.get("class_names")
    if names is None:
        try:
            return build_class_names(config)
        except ConfigError as error:
            raise CheckpointError(path, f"names no classes and {error}") from None
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise CheckpointError(path, "its class_names are not a non-empty list of strings")
    return list(names)
