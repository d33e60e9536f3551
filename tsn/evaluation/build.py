"""The evaluation subsystem's config readers: the model a config names (trained or pretrained), and
``run_test``, which reads the config and hands built objects to
``tsn.evaluation.testing.evaluate_and_report``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from tsn.build import build_class_names, build_dataset, build_loader, build_tsn, list_path
from tsn.config import Config, ConfigError, config_text
from tsn.evaluation.deployed import ExportedTSN
from tsn.evaluation.inference import load_trained
from tsn.evaluation.testing import (ModelUnderTest, Report, TestSettings, check_class_names,
                                    evaluate_and_report, videos_per_test_batch)
from tsn.models import TSN
from tsn.runtime.distributed import init_distributed

logger = logging.getLogger("tsn.test")


def build_inference_model(cfg: Config, num_classes: int, checkpoint: Path | None) -> TSN:
    """The config's TSN: with ``checkpoint``, its trained weights (``tsn.evaluation.inference.load_trained``,
    strict, its own classes, in eval mode); without, the ImageNet backbone (``model.pretrained``)
    and a new head for ``num_classes`` classes."""
    if checkpoint is None:
        return build_tsn(cfg, num_classes)
    return load_trained(checkpoint, cfg).model


def load_model_under_test(cfg: Config, path: Path, device: torch.device, exported: bool) -> ModelUnderTest:
    """A checkpoint (``load_trained`` with ``cfg``'s network) or, with ``exported``, a file of ``tools/export.py``
    run by onnxruntime or TorchScript, whose clips must be the ones ``cfg`` makes (a ``ConfigError`` names the
    first difference)."""
    if not exported:
        trained = load_trained(path, cfg, device)
        model = trained.model
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        return ModelUnderTest(model, trained.class_names, tuple(model.spec.mean), tuple(model.spec.std),
                              cfg.train.channels_last, trained.selected_on, trained.epoch)
    deployed = ExportedTSN(path, device)
    data = cfg.data
    wanted = {"data.modality": (deployed.config.data.modality, data.modality),
              "data.num_segments": (deployed.config.data.num_segments, data.num_segments),
              "data.new_length": (deployed.config.data.frames_per_segment, data.frames_per_segment),
              "data.input_size": (deployed.spec.size, data.input_size)}
    for key, (theirs, ours) in wanted.items():
        if theirs != ours:
            raise ConfigError(key, f"{path} was exported with {theirs}, the config says {ours}")
    logger.info("running %s with %s", path, deployed.runtime)
    return ModelUnderTest(deployed, deployed.class_names, None, None, False, None)


def run_test(cfg: Config, checkpoint: Path, out_dir: Path, list_file: Path | None = None,
             num_clips: int | None = None, crops: int | None = None, device: str = "auto",
             progress: bool = True, batch_size: int | None = None, exported: bool = False) -> Report:
    """Test ``checkpoint`` (with ``exported``: a file of ``tools/export.py``) on ``list_file`` (default
    ``data.test_list``) with clips x crops views; writes the files (``evaluate_and_report``).

    ``batch_size``: videos per loader batch (default: ``videos_per_test_batch`` of ``data.batch_size``)."""
    info = init_distributed(device)
    if info.distributed:
        raise RuntimeError("tools/test.py runs in one process; launch it without torchrun")
    model = load_model_under_test(cfg, checkpoint, info.device, exported)
    check_class_names(checkpoint, model.class_names, build_class_names(cfg))
    dataset = build_dataset(cfg, "test", len(model.class_names), list_file=list_file, num_clips=num_clips,
                            crops=crops)
    views = dataset.num_clips * (crops if crops is not None else cfg.test.crops)
    batch_size = batch_size or videos_per_test_batch(cfg.data.batch_size, views, cfg.test.clips_per_forward)
    loader = build_loader(cfg, dataset, train=False, distributed=False, batch_size=batch_size)
    settings = TestSettings(checkpoint=checkpoint, test_list=list_file or list_path(cfg, "test"), views=views,
                            amp=cfg.train.amp, clips_per_forward=cfg.test.clips_per_forward,
                            on_nonfinite=cfg.test.on_nonfinite, config_text=config_text(cfg))
    return evaluate_and_report(model, loader, settings, out_dir, info.device, progress)
