"""The embedded demo: a synthetic action data set, a 3-segment TSN trained on it, and its report.

Runs on the CPU with the offline ImageNet EfficientNet-Lite0, with no data of the user's:
``python tools/train.py`` (or ``make demo``) with no arguments.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from tsn.config import load_config
from tsn.data.synthetic import DemoData, make_demo_dataset
from tsn.evaluation.build import run_test
from tsn.evaluation.testing import Report, format_per_class_table
from tsn.training.build import train
from tsn.training.trainer import TrainResult, setup_logging

logger = logging.getLogger("tsn.demo")


def run_demo(config_path: Path, work_dir: Path, overrides: Sequence[str] = (),
             device: str = "auto", data: DemoData | None = None) -> tuple[TrainResult, Report]:
    """Make (or reuse) the demo data under ``work_dir/data``, train ``config_path`` on it, test the last
    checkpoint on val (the demo has no third list: ``best.pth`` was chosen on those very videos).

    ``data``: an already made demo data set to use instead (e.g. a smaller one, for tests).
    """
    setup_logging(work_dir, True)
    if data is None:
        data = make_demo_dataset(work_dir / "data")
    logger.info("demo data: %s", data.root)
    cfg = load_config(config_path, [f"data.root={data.root}", *overrides])
    result = train(cfg, work_dir, device=device)
    report = run_test(cfg, work_dir / "latest.pth", work_dir / "test", list_file=data.val_list, device=device)
    class_names = data.classes.read_text().split("\n")
    print(format_per_class_table(report, [name for name in class_names if name]))
    print(f"outputs: {work_dir} (test report in {work_dir / 'test'})")
    return result, report
