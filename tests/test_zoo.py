"""Model-zoo checkpoints (mmaction2 1.x, the TSM repository, tsn-pytorch) load into this project's ResNet TSN.

Each test writes this project's model under another codebase's key names, by the inverse of the layout
``tsn.models.zoo`` documents (checked against the key names mmaction2 1.2.0 itself gives its TSM-R50, listed in
``mmaction2_tsm_r50_keys.txt``), loads the file through ``model.pretrained`` and compares weights and logits.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tsn.apps.zoo_import import imported_checkpoint, read_zoo_checkpoint, zoo_config
from tsn.build import build_tsn
from tsn.checkpoint import save_checkpoint
from tsn.config import Config, ConfigError, config_from_dict, load_config
from tsn.evaluation.inference import load_trained
from tsn.models import TSN, build_model
from tsn.models.zoo import ZooCheckpointError, zoo_format

REPO = Path(__file__).resolve().parents[1]
SEGMENTS = 4
CLASSES = 5

# Every state-dict key of mmaction2 1.2.0's TSM-R50 recogniser, as it printed them.
MMACTION2_TSM_R50_KEYS = Path(__file__).with_name("mmaction2_tsm_r50_keys.txt")


def _model(temporal: str = "none", backbone: str = "resnet50", seed: int = 0, **kwargs: object) -> TSN:
    """A random ResNet TSN in eval mode, BatchNorm statistics drawn (so that a swapped tensor changes the logits)."""
    torch.manual_seed(seed)
    model = build_model(backbone=backbone, pretrained=False, num_classes=CLASSES, num_segments=SEGMENTS,
                        consensus="avg", dropout=0.0, temporal=temporal, **kwargs)
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _to_mmaction2(model: TSN) -> dict[str, torch.Tensor]:
    """The model's state dict in mmaction2's names (ConvModule ``convN.conv``/``convN.bn``, shift ``.net``)."""
    shifted = {f"backbone.{name}" for name, m in model.backbone.named_modules() if type(m).__name__ == "ShiftedConv2d"}
    out = {}
    for key, tensor in model.state_dict().items():
        module, _, param = key.rpartition(".")
        if module == "head.fc":
            out[f"cls_head.fc_cls.{param}"] = tensor
            continue
        new = re.sub(r"downsample\.0$", "downsample.conv", module)
        new = re.sub(r"downsample\.1$", "downsample.bn", new)
        new = re.sub(r"(^|\.)conv(\d)$", r"\1conv\2.conv", new)
        new = re.sub(r"(^|\.)bn(\d)$", r"\1conv\2.bn", new)
        if module in shifted:
            new += ".net"
        out[f"{new}.{param}"] = tensor
    return out


def _to_tsm_repo(model: TSN, head: str = "new_fc") -> dict[str, torch.Tensor]:
    """The model's state dict as the TSM repository (or tsn-pytorch, without shifts) saves it from DataParallel."""
    shifted = {f"backbone.{name}" for name, m in model.backbone.named_modules() if type(m).__name__ == "ShiftedConv2d"}
    out = {}
    for key, tensor in model.state_dict().items():
        module, _, param = key.rpartition(".")
        if module == "head.fc":
            out[f"module.{head}.{param}"] = tensor
            continue
        new = module.replace("backbone.", "module.base_model.", 1) + (".net" if module in shifted else "")
        out[f"{new}.{param}"] = tensor
    return out


def _save(state: dict[str, torch.Tensor], path: Path, fmt: str) -> Path:
    """``state`` wrapped as each codebase writes its files."""
    if fmt == "mmaction2":
        torch.save({"meta": {"epoch": 50, "mmengine_version": "0.10.7"}, "state_dict": state}, path,
                   _use_new_zipfile_serialization=False)
    else:
        torch.save({"epoch": 50, "arch": "resnet50", "state_dict": state, "best_prec1": 70.0}, path)
    return path


def _clip() -> torch.Tensor:
    return torch.randn(2, SEGMENTS, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_the_inverse_layout_gives_mmaction2s_own_key_names() -> None:
    real = [line for line in MMACTION2_TSM_R50_KEYS.read_text().splitlines() if not line.startswith("#")]
    assert len(real) == 320
    assert set(_to_mmaction2(_model("tsm"))) == set(real)
    assert set(_to_mmaction2(_model("none"))) == {key.replace(".net.", ".") for key in real}


@pytest.mark.parametrize(("fmt", "temporal", "head"), [
    ("mmaction2", "none", "new_fc"), ("mmaction2", "tsm", "new_fc"), ("tsm", "tsm", "new_fc"),
    ("tsn_pytorch", "none", "new_fc"), ("tsn_pytorch", "none", "base_model.fc"),
])
def test_a_zoo_file_loads_every_weight_and_gives_the_same_logits(tmp_path: Path, fmt: str, temporal: str,
                                                                 head: str) -> None:
    source = _model(temporal)
    state = _to_mmaction2(source) if fmt == "mmaction2" else _to_tsm_repo(source, head)
    path = _save(state, tmp_path / "zoo.pth", fmt)
    assert zoo_format(state) == fmt
    loaded = build_model(backbone="resnet50", pretrained=path, num_classes=CLASSES, num_segments=SEGMENTS,
                         consensus="avg", dropout=0.0, temporal=temporal).eval()
    own = loaded.state_dict()
    assert own.keys() == source.state_dict().keys()
    assert all(torch.equal(own[k], v) for k, v in source.state_dict().items() if not k.endswith("batches_tracked"))
    with torch.no_grad():
        assert torch.equal(loaded(_clip()), source(_clip()))


def test_the_config_names_the_format_and_a_head_of_other_classes_starts_new(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    source = _model("none", backbone="resnet18")
    path = _save(_to_mmaction2(source), tmp_path / "zoo.pth", "mmaction2")
    cfg = config_from_dict({"model": {"backbone": "resnet18", "pretrained": str(path),
                                      "pretrained_format": "mmaction2", "consensus": "avg"},
                            "data": {"num_segments": SEGMENTS}})
    with caplog.at_level(logging.INFO, logger="tsn.models"):
        model = build_tsn(cfg, CLASSES + 1)
    assert "has a classifier of 5 classes and the model a GAPHead of 6: the head starts new" in caplog.text
    assert torch.equal(model.backbone.layer4[1].conv2.weight, source.backbone.layer4[1].conv2.weight)
    assert not torch.equal(model.head.fc.weight[:CLASSES], source.head.fc.weight)


def test_foreign_objects_in_the_metadata_are_skipped_and_never_run(tmp_path: Path) -> None:
    path = tmp_path / "zoo.pth"
    # what mmengine's training log holds: its classes, numpy arrays and scalars, bound methods (builtins.getattr)
    meta = {"log": _TrainingLog(), "history": np.arange(3.0), "loss": np.float64(1.5), "hook": [].append}
    torch.save({"meta": meta, "state_dict": _to_mmaction2(_model(backbone="resnet18"))}, path)
    _TrainingLog.loaded = False
    assert read_zoo_checkpoint(path).format == "mmaction2"
    assert not _TrainingLog.loaded


class _TrainingLog:
    """Stands for mmengine's HistoryBuffer in an mmaction2 file's metadata: a class that torch's weights-only
    loader does not know; unpickling it for real would set ``loaded``."""

    loaded = False

    def __setstate__(self, state: dict) -> None:
        type(self).loaded = True


def test_the_importer_writes_a_checkpoint_that_load_trained_runs_with_the_zoo_classes(tmp_path: Path) -> None:
    source = _model("tsm", backbone="resnet18")
    path = _save(_to_tsm_repo(source), tmp_path / "TSM_resnet18.pth", "tsm")
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"action {i}\n" for i in range(CLASSES)))
    weights = read_zoo_checkpoint(path)
    cfg = zoo_config(Config(), weights, path, classes, [f"data.num_segments={SEGMENTS}"])
    assert (cfg.model.backbone, cfg.model.temporal, cfg.model.consensus) == ("resnet18", "tsm", "avg")
    save_checkpoint(imported_checkpoint(cfg, weights, [f"action {i}" for i in range(CLASSES)], str(path)),
                    tmp_path / "model.pth")
    trained = load_trained(tmp_path / "model.pth")
    assert trained.class_names == [f"action {i}" for i in range(CLASSES)]
    with torch.no_grad():
        assert torch.equal(trained.model(_clip()), source(_clip()))
    with pytest.raises(ZooCheckpointError, match=r"has a classifier of 5 classes, and the class file names 4$"):
        imported_checkpoint(cfg, weights, ["a", "b", "c", "d"], str(path))


def _load(tmp_path: Path, state: dict[str, torch.Tensor], fmt: str = "auto", **kwargs: object) -> TSN:
    path = _save(state, tmp_path / "zoo.pth", "mmaction2")
    options = {"backbone": "resnet18", "num_classes": CLASSES, "num_segments": SEGMENTS, **kwargs}
    return build_model(pretrained=path, pretrained_format=fmt, **options)


def test_an_unknown_tensor_is_named_with_the_count(tmp_path: Path) -> None:
    state = _to_mmaction2(_model(backbone="resnet18"))
    state["backbone.layer1.0.nl.conv.weight"] = torch.zeros(1)
    state["neck.fc.weight"] = torch.zeros(1)
    with pytest.raises(ZooCheckpointError, match=r"zoo.pth: 2 tensors of the mmaction2 checkpoint have no place in "
                                                 r"backbone 'resnet18' \(first: neck.fc.weight\)$"):
        _load(tmp_path, state)


def test_a_missing_tensor_is_named_with_the_count(tmp_path: Path) -> None:
    state = _to_mmaction2(_model(backbone="resnet18"))
    del state["backbone.layer2.1.conv2.bn.running_var"], state["backbone.layer3.0.conv1.conv.weight"]
    with pytest.raises(ZooCheckpointError, match=r"2 tensors of backbone 'resnet18' are not in the mmaction2 "
                                                 r"checkpoint \(first: backbone.layer2.1.bn2.running_var\)$"):
        _load(tmp_path, state)


def test_a_file_of_another_depth_says_which_it_holds(tmp_path: Path) -> None:
    with pytest.raises(ZooCheckpointError, match=r"\(the file holds a resnet50\)"):
        _load(tmp_path, _to_mmaction2(_model()))


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path: Path) -> None:
    state = _to_mmaction2(_model(backbone="resnet18"))
    state["backbone.layer1.1.conv2.conv.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ZooCheckpointError, match=r"backbone.layer1.1.conv2.conv.weight has shape \(64, 64, 1, 1\) "
                                                 r"in the file but backbone.layer1.1.conv2.weight has "
                                                 r"\(64, 64, 3, 3\) in the model$"):
        _load(tmp_path, state)


def test_an_unrecognised_origin_is_refused(tmp_path: Path) -> None:
    torchvision_like = {k.removeprefix("backbone."): v for k, v in _model(backbone="resnet18").state_dict().items()}
    with pytest.raises(ZooCheckpointError, match=r"zoo.pth: not a mmaction2 checkpoint \(first key: conv1.weight\)"):
        _load(tmp_path, torchvision_like, fmt="mmaction2")
    path = _save(torchvision_like, tmp_path / "plain.pth", "tsm")
    with pytest.raises(ZooCheckpointError, match=r"plain.pth: not a checkpoint of mmaction2, the TSM repository or "
                                                 r"tsn-pytorch \(first key: conv1.weight\)$"):
        read_zoo_checkpoint(path)
    with pytest.raises(ConfigError, match=r"^model.pretrained_format: mmaction2 names the layout of a file"):
        config_from_dict({"model": {"pretrained_format": "mmaction2"}})


def test_the_shifted_blocks_must_be_the_models(tmp_path: Path) -> None:
    tsm = _to_mmaction2(_model("tsm", backbone="resnet18"))
    with pytest.raises(ZooCheckpointError, match=r"a TSM checkpoint \(8 shifted convolutions, e.g. layer1.0.conv1\): "
                                                 r"set model.temporal: tsm$"):
        _load(tmp_path, tsm)
    every_other = {re.sub(r"(layer\d\.1\.conv1\.conv)\.net", r"\1", k): v for k, v in tsm.items()}
    with pytest.raises(ZooCheckpointError, match=r"shifts the first convolution of 4 of the 8 residual blocks"):
        _load(tmp_path, every_other, temporal="tsm")


def test_tsn_weights_start_a_tsm_but_do_not_make_a_whole_tsm(tmp_path: Path) -> None:
    source = _model(backbone="resnet18")
    model = _load(tmp_path, _to_mmaction2(source), temporal="tsm")
    assert torch.equal(model.backbone.conv1.weight, source.backbone.conv1.weight)
    weights = read_zoo_checkpoint(tmp_path / "zoo.pth")
    cfg = zoo_config(Config(), weights, tmp_path / "zoo.pth", tmp_path / "none.txt", ["model.temporal=tsm"])
    with pytest.raises(ZooCheckpointError, match=r"a TSN checkpoint without temporal shift: set model.temporal: none$"):
        imported_checkpoint(cfg, weights, [str(i) for i in range(CLASSES)], "zoo.pth")


def test_a_backbone_that_is_no_resnet_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ZooCheckpointError, match=r"backbone 'mobilenet_v3_large' is none: use resnet18"):
        _load(tmp_path, _to_mmaction2(_model(backbone="resnet18")), backbone="mobilenet_v3_large")


def _save_with_config(state: dict[str, torch.Tensor], path: Path, cfg_text: str) -> Path:
    """An mmaction2 file with the training config mmengine saves as ``meta["cfg"]``."""
    torch.save({"meta": {"cfg": cfg_text, "epoch": 50}, "state_dict": state}, path)
    return path


TSM_CFG = ("model = dict(type='Recognizer2D', backbone=dict(type='ResNetTSM', depth=18, num_segments=%d, "
           "shift_div=%d%s), cls_head=dict(type='TSMHead', num_segments=%d))")


def test_mmaction2s_saved_config_sets_the_importers_segments_and_refuses_another_shift(tmp_path: Path) -> None:
    state = _to_mmaction2(_model("tsm", backbone="resnet18"))
    path = _save_with_config(state, tmp_path / "zoo.pth", TSM_CFG % (16, 8, "", 16))
    weights = read_zoo_checkpoint(path)
    assert weights.trained_with == {"shift_div": 8, "num_segments": 16}
    cfg = zoo_config(Config(), weights, path, tmp_path / "classes.txt")
    assert (cfg.data.num_segments, cfg.model.shift_div) == (16, 8)
    _save_with_config(state, path, TSM_CFG % (8, 4, "", 8))
    with pytest.raises(ZooCheckpointError, match=r"zoo.pth: trained with shift_div=4: set model.shift_div: 4$"):
        build_model(backbone="resnet18", pretrained=path, num_classes=CLASSES, num_segments=8, temporal="tsm")
    _save_with_config(state, path, TSM_CFG % (8, 8, ", temporal_pool=True", 8))
    with pytest.raises(ZooCheckpointError, match=r"trained with temporal pooling \(temporal_pool=True\)"):
        build_model(backbone="resnet18", pretrained=path, num_classes=CLASSES, num_segments=8, temporal="tsm")


def test_a_kept_data_preprocessor_must_normalise_as_the_model(tmp_path: Path) -> None:
    source = _model(backbone="resnet18")
    state = _to_mmaction2(source)
    state["data_preprocessor.mean"] = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    state["data_preprocessor.std"] = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    model = _load(tmp_path, state)
    assert torch.equal(model.backbone.conv1.weight, source.backbone.conv1.weight)
    state["data_preprocessor.std"] = torch.tensor([1.0, 1.0, 1.0]).view(3, 1, 1)
    with pytest.raises(ZooCheckpointError, match=r"zoo.pth: normalises with std \[1.0, 1.0, 1.0\] \(0..255\), and "
                                                 r"resnet18 with \[58.395, 57.12, 57.375\]$"):
        _load(tmp_path, state)


def test_the_import_tool_writes_a_checkpoint_and_the_config_tools_test_takes(tmp_path: Path) -> None:
    source = _model("tsm", backbone="resnet18")
    zoo = _save_with_config(_to_mmaction2(source), tmp_path / "zoo.pth", TSM_CFG % (SEGMENTS, 8, "", SEGMENTS))
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"action {i}\n" for i in range(CLASSES)))
    tool = [sys.executable, str(REPO / "tools" / "import_checkpoint.py")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([*tool, str(zoo), "--classes", str(classes), "--out-file", str(tmp_path / "m.pth")], env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    trained = load_trained(tmp_path / "m.pth", load_config(tmp_path / "m.yaml"))  # as tools/test.py loads it
    assert trained.config.data.num_segments == SEGMENTS  # from the file's saved config
    with torch.no_grad():
        assert torch.equal(trained.model(_clip()), source(_clip()))
    done = subprocess.run([*tool, str(classes), "--classes", str(classes), "--out-file", str(tmp_path / "x.pth")], env=env,
                          capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr.count("\n")) == (2, 1)
    assert done.stderr.startswith(f"error: {classes}: cannot read checkpoint")


def test_this_projects_own_checkpoint_is_no_zoo_layout() -> None:
    own = build_model(backbone="resnet18", pretrained=False, num_classes=3, num_segments=2).state_dict()
    assert zoo_format(own) is None  # backbone.* keys, but neither mmaction2's head nor its conv modules
