"""Pools: per-process thread pools shared by the data path (clips of a batch, JPEGs of a frame folder), and
the process pool of the tools that work through a list of videos (``run_unordered``)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence, TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")

# name -> (process id, threads, pool). A pool does not survive a fork (its threads stay behind),
# so a loader worker that inherits one makes its own.
_pools: dict[str, tuple[int, int, ThreadPoolExecutor]] = {}


def thread_pool(name: str, threads: int) -> ThreadPoolExecutor:
    """This process's pool ``name`` of ``threads`` threads (made again after a fork or when the count changes)."""
    pool = _pools.get(name)
    if pool is None or pool[:2] != (os.getpid(), threads):
        pool = _pools[name] = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix=f"tsn-{name}"))
    return pool[2]


def run_unordered(work: Callable[[Task], Result], tasks: Sequence[Task], workers: int) -> Iterator[Result]:
    """``work(task)`` for every task, results as they finish: in this process when ``workers`` is 1 (or one
    task), else in a pool of ``workers`` spawned processes (``work`` and the tasks must pickle). Spawned, not
    forked: decoders and encoders keep threads, which a fork does not copy."""
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            yield work(task)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(work, tasks, chunksize=1)
