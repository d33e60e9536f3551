"""The allocation strategy (``tsn.runtime.allocator``): active in every process that imports tsn, loader workers
included, off with ``TSN_ALLOCATOR=system``, and without any effect on what is computed (issue 22)."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tiny_training import REPO_ROOT, make_tiny_data, run_tool, tiny_overrides, tool_env
from tsn.runtime import allocator

BLOCK = 64 * 2**20  # above glibc's largest mmap threshold (32 MB): mapped on its own by default


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def mapped_for_a_large_block() -> int:
    """How many mappings of their own glibc made for a 64 MB block (1 by default, 0 when large blocks are kept)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2().hblks
    block = libc.malloc(BLOCK)
    during = libc.mallinfo2().hblks
    libc.free(block)
    return during - before


class Probe(torch.utils.data.Dataset):
    """Every item: this process's strategy and whether a large block got a mapping of its own."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> tuple[str, int]:
        return allocator.strategy(), mapped_for_a_large_block()


glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"),
                           reason="needs glibc 2.33 or newer (mallinfo2)")


def _in_new_interpreter(code: str, **env: str) -> list[str]:
    """Output lines of ``python -c code`` with this test folder importable and ``env`` added."""
    full = tool_env(PYTHONPATH=f"{REPO_ROOT / 'tests'}:{REPO_ROOT}", **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                          check=True).stdout.splitlines()


PROBE_WORKERS = ("import tsn.runtime.allocator as a, test_allocator as t, torch; print(a.strategy()); "
                 "print(t.mapped_for_a_large_block()); "
                 "[print(s, m) for c in ('fork', 'spawn', 'forkserver') for s, m in torch.utils.data.DataLoader(t.Probe(), "
                 "batch_size=None, num_workers=2, multiprocessing_context=c)]")


@glibc
@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_glibc_keeps_large_blocks_in_a_process_that_imports_tsn_and_its_workers(context: str) -> None:
    # pytest cannot start again with mimalloc preloaded: the glibc strategy applies at import
    assert allocator.strategy().startswith("glibc: ")
    assert mapped_for_a_large_block() == 0
    loader = torch.utils.data.DataLoader(Probe(), batch_size=None, num_workers=2, multiprocessing_context=context)
    for strategy, mapped in loader:
        assert strategy.startswith("glibc: ") and mapped == 0


@glibc
def test_system_keeps_glibcs_defaults_and_an_unknown_value_says_so() -> None:
    lines = _in_new_interpreter(PROBE_WORKERS, TSN_ALLOCATOR="system")
    assert lines[:2] == ["system: glibc's defaults (TSN_ALLOCATOR=system)", "1"]
    assert lines[2:] == ["system: glibc's defaults (TSN_ALLOCATOR=system) 1"] * 6  # 2 items in each context
    lines = _in_new_interpreter("import tsn.runtime.allocator as a; print(a.strategy())", TSN_ALLOCATOR="jemalloc")
    assert lines == ["system: TSN_ALLOCATOR='jemalloc' is not one of mimalloc, glibc, system, glibc's defaults are "
                     "kept"]


@pytest.mark.skipif(allocator.mimalloc_library() is None, reason="cmeel-mimalloc is not installed (Linux only)")
def test_workers_of_a_process_with_mimalloc_run_with_it_too() -> None:
    lines = _in_new_interpreter(PROBE_WORKERS, LD_PRELOAD=str(allocator.mimalloc_library()), MIMALLOC_PURGE_DELAY="-1")
    assert all(line.startswith("mimalloc: preloaded") for line in lines[:1] + lines[2:]) and len(lines) == 8


@pytest.mark.skipif(allocator.mimalloc_library() is None, reason="cmeel-mimalloc is not installed (Linux only)")
def test_tools_start_again_with_mimalloc_and_losses_are_bit_identical_with_every_strategy(tmp_path: Path) -> None:
    data = make_tiny_data(tmp_path / "data")
    opts = [item for o in tiny_overrides(data, epochs=2) for item in ("--opt", o)]

    def train(choice: str):
        return run_tool("train.py", ["--config", str(REPO_ROOT / "configs" / "demo.yaml"), "--work-dir",
                                     str(tmp_path / choice), "--no-progress", *opts, "--opt", "data.num_workers=1"],
                        env=tool_env(TSN_ALLOCATOR=choice))

    choices = ("mimalloc", "glibc", "system")
    with ThreadPoolExecutor(len(choices)) as pool:  # three processes at once: most of each is starting Python
        results = dict(zip(choices, pool.map(train, choices)))
    losses = {}
    for choice, result in results.items():
        work = tmp_path / choice
        assert result.returncode == 0, result.stderr
        assert f"memory allocator: {choice}: " in (work / "train.log").read_text()
        records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
        losses[choice] = [(r["train_loss"], r["val_loss"]) for r in records]
    assert losses["mimalloc"] == losses["glibc"] == losses["system"]


# The main process touches and frees 1 GiB, which the glibc strategy keeps in its heap, then starts a loader
# worker and prints the worker's resident memory in MiB. A forked worker would hold a copy of that GiB.
INHERITED = ("import os, sys, torch; from pathlib import Path; import tsn.runtime.allocator as a; "
             "from tsn.data.dataset import ClipDataset; from tsn.data.lists import read_list; "
             "from tsn.data.loader import build_dataloader; from tsn.data.transforms import val_transform; "
             "from tsn.measure.soak import rss_mb, worker_pids; root = Path(sys.argv[1]); "
             "block = torch.ones(2**28); del block; "
             "dataset = ClipDataset(read_list(root / 'train.txt', 'video'), root, 'video', 'pyav', 'val', 2, 1, "
             "val_transform(64, 64)); loader = build_dataloader(dataset, 2, False, 1, 0, False); "
             "next(iter(loader)); print(a.strategy()); print(*[rss_mb(p) for p in worker_pids(os.getpid())])")


@glibc
def test_loader_workers_do_not_inherit_the_memory_the_main_process_keeps(tmp_path: Path) -> None:
    data = make_tiny_data(tmp_path / "data")
    full = tool_env(PYTHONPATH=f"{REPO_ROOT / 'tests'}:{REPO_ROOT}", TSN_ALLOCATOR="glibc")
    lines = subprocess.run([sys.executable, "-c", INHERITED, str(data.root)], capture_output=True, text=True,
                           env=full, check=True).stdout.splitlines()
    assert lines[0].startswith("glibc: ")
    (worker_mb,) = map(float, lines[1].split())
    assert worker_mb < 700, f"the loader worker holds {worker_mb:.0f} MiB: it inherited the main process's heap"
