"""The config readers of the apps: ``run_extract`` reads the config and hands built objects to
``tsn.apps.features.extract_to``."""

from __future__ import annotations

import dataclasses

import logging
from pathlib import Path

from tsn.apps.features import QUERY_BATCH, ExtractResult, ExtractSettings, check_layer, extract_to
from tsn.build import build_class_names, build_dataset, build_loader
from tsn.config import Config
from tsn.evaluation.build import build_inference_model
from tsn.runtime.device import resolve_device

logger = logging.getLogger("tsn.features")


def run_extract(cfg: Config, list_file: Path, out_dir: Path, checkpoint: Path | None = None,
                layer: str | None = None, knn: int | None = None, batch_size: int | None = None,
                device: str = "auto", query_batch: int = QUERY_BATCH, progress: bool = True) -> ExtractResult:
    """Features of every video of ``list_file`` (val clips) written under ``out_dir``; with ``knn`` also
    the neighbours and precision@K (``tsn.apps.features``). Returns what was written."""
    torch_device = resolve_device(device)
    if not list_file.is_file():
        raise ValueError(f"{list_file}: list not found")
    class_names = build_class_names(cfg)
    # one view per video (the val clip), whatever views a run's config validated on
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, val_num_clips=1, val_crops=1))
    dataset = build_dataset(cfg, "val", len(class_names), list_file=list_file)
    if knn is not None and not 1 <= knn < len(dataset):
        raise ValueError(f"--knn {knn} needs 1 <= K < {len(dataset)}, the number of videos in {list_file}")
    model = build_inference_model(cfg, len(class_names), checkpoint)
    if layer is not None:
        check_layer(model, layer)  # before any decoding
    model.to(torch_device)
    loader = build_loader(cfg, dataset, train=False, distributed=False, batch_size=batch_size)
    logger.info("features of %d videos of %s (%s, layer %s) on %s", len(dataset), list_file,
                checkpoint or "ImageNet weights", layer or "output", torch_device)
    settings = ExtractSettings(layer=layer, knn=knn, query_batch=query_batch, amp=cfg.train.amp,
                               on_nonfinite=cfg.test.on_nonfinite)
    return extract_to(model, loader, out_dir, torch_device, settings, progress)
