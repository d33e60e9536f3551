"""DataLoader for ``ClipDataset``: seeded shuffling, epoch-aware keys, persistent workers.

The epoch problem: with ``persistent_workers=True`` every worker keeps the copy of the
dataset it got at start-up, so ``dataset.set_epoch`` in the main process never reaches it
and augmentation would repeat every epoch. Here the sampler, which always runs in the main
process, yields ``ClipKey(epoch, index)`` instead of bare indices; the dataset draws its
randomness from (seed, epoch, index) in the key. So workers stay persistent (no re-fork and
no re-probe of every video each epoch), a sample never depends on which worker made it or
how many there are, and ``set_loader_epoch(loader, epoch)`` is the one call per epoch.

Shuffling: the order of epoch e is ``torch.randperm`` from a generator seeded with
``seed + e`` (what ``DistributedSampler`` does), so it does not depend on earlier epochs
and a resumed run sees the same order. With ``distributed=True`` torch's
``DistributedSampler`` splits that order between ranks (padding with repeats so that every
rank gets the same number of samples; ``EpochSampler.is_padding`` tells the repeats apart, and
evaluation leaves them out).

Workers start from a fork server (``worker_context``), not as forks of the main process: a training
process keeps freed memory for reuse (``tsn.runtime.allocator``), and a forked worker would keep a copy of
all of it, gigabytes after a probe's feature pass, that the main process's next steps then duplicate page by
page as they write to it. As with spawn (macOS, Windows; Python 3.14's default on Linux is this fork server),
a script of your own that iterates such a loader must start under ``if __name__ == "__main__":``, or Python
says so. A worker gets the dataset pickled: a dataset or transform class of your own must come from an
importable module, not a notebook cell. The server starts once per process (the imports of a tool's start).
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.context
import random
import sys
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from tsn.data.dataset import ClipDataset, ClipKey, collate_clips
from tsn.runtime import log_setup

# Batches each worker prepares ahead (torch's default): with uint8 clips of 32 x 8 frames at
# 224 px this is ~40 MB per batch, so 2 per worker stays small even with 16 workers.
PREFETCH_FACTOR = 2
# What the fork server imports once, so that each worker it forks starts with them loaded.
# Python before 3.13 ignores "__main__" here and each worker runs the main script again (as "__mp_main__";
# a tool's script only imports): worker_context adds every tsn module the main process has loaded, so
# that those imports cost nothing.
WORKER_PRELOAD = ["__main__", "torch", "tsn.data.dataset", "tsn.data.loader"]


def worker_context() -> multiprocessing.context.BaseContext | None:
    """Where loader workers start: a fork server on Linux (a fresh process that imported torch and the tsn
    modules this process has loaded, forked for each worker; the dataset reaches a worker pickled), None (the
    platform's default: spawn on macOS and Windows) elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    context = multiprocessing.get_context("forkserver")
    loaded = sorted(name for name in sys.modules if name == "tsn" or name.startswith("tsn."))
    # a process-wide setting, read once: when the server first starts
    context.set_forkserver_preload(WORKER_PRELOAD + [name for name in loaded if name not in WORKER_PRELOAD])
    return context


class IndexOrder(Sampler[int]):
    """``0 .. num_samples - 1`` in order, or shuffled by ``torch.randperm`` seeded with ``seed + epoch``."""

    def __init__(self, num_samples: int, shuffle: bool, seed: int) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class ClassBalancedOrder(Sampler[int]):
    """Each epoch, every class as often as the largest: class ``c`` with ``n_c`` of the ``labels`` contributes
    ``m = max n_c`` indices, its videos in a seeded permutation repeated until ``m`` are taken (so every video
    is drawn at least ``m // n_c`` times, never skipped), and all classes' indices are shuffled together.
    Deterministic in (``seed``, epoch), as ``IndexOrder``.

    ``num_replicas`` > 1 (DDP): the epoch's order is padded with its start to a multiple of ``num_replicas``
    and rank ``rank`` takes positions ``rank, rank + num_replicas, ...``, as ``DistributedSampler`` does.
    """

    def __init__(self, labels: Sequence[int], seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        labels_array = np.asarray(labels, dtype=np.int64)
        if labels_array.size == 0:
            raise ValueError("a class-balanced order needs at least one labelled video")
        self.members = [np.flatnonzero(labels_array == c) for c in np.unique(labels_array)]  # per present class
        self.per_class = max(len(members) for members in self.members)
        self.total = self.per_class * len(self.members)
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the next iteration: its order is drawn from ``seed + epoch``."""
        self.epoch = epoch

    def epoch_order(self) -> list[int]:
        """This epoch's whole order, every rank's (``total`` indices)."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        drawn = []
        for members in self.members:
            rounds = -(-self.per_class // len(members))  # ceil: enough permutations to fill per_class
            picks = torch.cat([torch.randperm(len(members), generator=generator) for _ in range(rounds)])
            drawn.append(torch.from_numpy(members)[picks[:self.per_class]])
        everything = torch.cat(drawn)
        return everything[torch.randperm(len(everything), generator=generator)].tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        while len(order) < len(self) * self.num_replicas:  # pad with the start to a multiple of the ranks
            order += order[:len(self) * self.num_replicas - len(order)]
        return iter(order[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return -(-self.total // self.num_replicas)


class EpochSampler(Sampler[ClipKey]):
    """Wraps an index order and yields ``ClipKey(epoch, index)`` so that workers know the epoch."""

    def __init__(self, order: IndexOrder | DistributedSampler | ClassBalancedOrder) -> None:
        self.order = order
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the next iteration, for the keys and for the shuffled order."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch
        self.order.set_epoch(epoch)

    def __iter__(self) -> Iterator[ClipKey]:
        epoch = self.epoch
        return (ClipKey(epoch, index) for index in self.order)

    def __len__(self) -> int:
        return len(self.order)

    def is_padding(self, position: int) -> bool:
        """Whether this rank's ``position``-th sample of an epoch is one of the repeats that
        ``DistributedSampler`` adds so that every rank gets as many samples: rank r takes positions
        r, r + world, ... of the padded order, whose positions from the dataset's length on repeat its
        start. Never with a single process. Evaluation leaves them out, so that every video counts once."""
        if not isinstance(self.order, DistributedSampler):
            return False
        return self.order.rank + position * self.order.num_replicas >= len(self.order.dataset)


def init_worker(worker_id: int, base_seed: int, logging_setup: tuple[log_setup.LoggerSetup, ...]) -> None:
    """A loader worker's start: the main process's logging (its console and files; a worker from the fork
    server has none of it), then ``seed_worker``."""
    log_setup.apply(logging_setup)
    seed_worker(worker_id, base_seed)


def seed_worker(worker_id: int, base_seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` in a loader worker from (base_seed, worker_id).

    ClipDataset does not use these global generators; a user transform that does gets
    distinct, reproducible streams per worker instead of forked copies of one state.
    """
    seed = int(np.random.SeedSequence([base_seed, worker_id]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_dataloader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int,
                     drop_last: bool, distributed: bool = False, pin_memory: bool | None = None,
                     balance_labels: Sequence[int] | None = None) -> DataLoader:
    """A DataLoader of ``ClipBatch`` over ``dataset`` (a ``ClipDataset`` or anything taking ``ClipKey`` keys).

    In: batch size, shuffle, worker count (0 = load in this process), seed for the order and
    the workers, drop_last (drop the last incomplete batch), distributed (split between the
    ranks of the initialised process group), pin_memory (``None``: when CUDA is available),
    ``balance_labels``: the dataset's labels, to draw every class equally often (``ClassBalancedOrder``,
    instead of each video once). Workers are persistent and prefetch ``PREFETCH_FACTOR`` batches each.
    Call ``set_loader_epoch(loader, epoch)`` before iterating each epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    order: IndexOrder | DistributedSampler | ClassBalancedOrder
    if balance_labels is not None:
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        order = ClassBalancedOrder(balance_labels, seed, world, rank)
    elif distributed:
        order = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False)
    else:
        order = IndexOrder(len(dataset), shuffle, seed)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    generator = torch.Generator()
    generator.manual_seed(seed)
    workers = num_workers > 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(order),
        num_workers=num_workers,
        collate_fn=collate_clips,
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=functools.partial(init_worker, base_seed=seed, logging_setup=log_setup.capture())
        if workers else None,
        multiprocessing_context=worker_context() if workers else None,
        generator=generator,
        persistent_workers=workers,
        prefetch_factor=PREFETCH_FACTOR if workers else None,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the loader's ``EpochSampler`` (keys, shuffled order) and of its dataset."""
    sampler = loader.sampler
    if not isinstance(sampler, EpochSampler):
        raise TypeError(f"loader was not made by build_dataloader: its sampler is {type(sampler).__name__}")
    sampler.set_epoch(epoch)
    if isinstance(loader.dataset, ClipDataset):
        # Only the main-process copy; workers read the epoch from the keys.
        loader.dataset.set_epoch(epoch)
