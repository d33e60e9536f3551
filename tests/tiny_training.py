"""A training setup small enough for the test suite: tiny demo videos, a ResNet-18 from scratch.

Used by the engine tests (training, resume, DDP, testing tools). One run of a few epochs over
8 training and 4 validation videos of 64x64 pixels takes a few seconds on two CPU cores.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator, Sequence

import torch

from tsn.data.synthetic import DemoData, make_demo_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_tiny_data(root: Path, num_classes: int = 2, train_per_class: int = 4, val_per_class: int = 2) -> DemoData:
    """Demo videos of 8 frames, 64x64 (the smallest size the generator allows), under ``root``."""
    return make_demo_dataset(root, num_classes=num_classes, videos_per_class_train=train_per_class,
                             videos_per_class_val=val_per_class, num_frames=8, size=64)


def tiny_overrides(data: DemoData, epochs: int = 3) -> list[str]:
    """``--opt`` overrides for a fast deterministic run on ``data``: ResNet-18 without pretrained
    weights, 2 segments of 64 px, batch 4, no loader workers, the val list also the test list."""
    return [
        f"data.root={data.root}",
        "data.test_list=val.txt",
        "data.input_size=64",
        "data.short_side=64",
        "data.num_segments=2",
        "data.batch_size=4",
        "data.num_workers=0",
        "model.backbone=resnet18",
        "model.pretrained=false",
        f"train.epochs={epochs}",
        "train.deterministic=true",
    ]


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (tools/ is not a package), so that its ``main``/``build_parser`` run in
    this process."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(script: str, args: Sequence[str], env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``tools/<script>`` with this interpreter from the repository root; output captured as text."""
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / script), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def run_tools_together(*calls: tuple[str, Sequence[str]]) -> list[subprocess.CompletedProcess]:
    """``run_tool(script, args, tool_env())`` for each ``(script, args)``, two at a time (most of a small tool
    run is starting Python and importing torch, one core each); the results in the order of ``calls``."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda call: run_tool(call[0], call[1], env=tool_env()), calls))


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for a tool subprocess: this one with one compute thread (see
    ``restored_global_state``), plus ``extra``."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


@contextmanager
def restored_global_state() -> Iterator[None]:
    """Run with one torch compute thread, then undo that and what an in-process
    ``train``/``run_demo`` changes globally: the "tsn" logger's handlers, level and propagation
    (so other tests' caplog still sees "tsn.*" records), the deterministic-algorithms switch
    and the global torch RNG.

    One thread: these models are tiny, and on a busy 2-core machine two OpenMP threads wait on
    each other and run several times slower than one.
    """
    logger = logging.getLogger("tsn")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            if handler not in handlers:
                handler.close()
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.set_rng_state(rng)
        torch.set_num_threads(threads)
