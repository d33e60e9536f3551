"""Per-process thread pools shared by the data path (clips of a batch, JPEGs of a frame folder)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

# name -> (process id, threads, pool). A pool does not survive a fork (its threads stay behind),
# so a loader worker that inherits one makes its own.
_pools: dict[str, tuple[int, int, ThreadPoolExecutor]] = {}


def thread_pool(name: str, threads: int) -> ThreadPoolExecutor:
    """This process's pool ``name`` of ``threads`` threads (made again after a fork or when the count changes)."""
    pool = _pools.get(name)
    if pool is None or pool[:2] != (os.getpid(), threads):
        pool = _pools[name] = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix=f"tsn-{name}"))
    return pool[2]
