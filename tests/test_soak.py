"""tools/soak.py's engine: worker memory over many epochs of the real Dataset and DataLoader, per backend.

A short soak over generated videos: the two persistent workers are found, measured after every epoch, and
their memory stays within the bound stated in the soak's note (50 MB per worker after the warm-up epoch;
here the videos are small, so this also guards against a reader that keeps decoders alive).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import subprocess
import sys
from pathlib import Path

import pytest

from badfiles import make_good_videos
from tsn.data.lists import VideoRecord
from tsn.measure.soak import rss_mb, soak, worker_pids

EPOCHS = 8
BOUND_MB = 50.0


def test_worker_pids_are_forked_children_and_fork_server_children_only() -> None:
    barriers, workers = [], []
    for name in ("fork", "forkserver"):
        context = multiprocessing.get_context(name)
        barriers.append(context.Event())
        workers.append(context.Process(target=barriers[-1].wait))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    for worker in workers:
        worker.start()
    try:
        pids = worker_pids(os.getpid())
        assert {worker.pid for worker in workers} <= set(pids)
        assert multiprocessing.forkserver._forkserver._forkserver_pid not in pids  # the server is no worker
        assert other.pid not in pids
        assert all(rss_mb(worker.pid) > 0 for worker in workers)
    finally:
        for barrier, worker in zip(barriers, workers):
            barrier.set()
            worker.join()
        other.kill()
        other.wait()


@pytest.mark.parametrize("backend", ["pyav", "decord", "opencv"])
def test_soak_measures_both_workers_every_epoch(tmp_path: Path, backend: str) -> None:
    lengths = {f"v{i}.mp4": 40 + i for i in range(6)}
    make_good_videos(tmp_path, lengths)
    records = [VideoRecord(name, 0) for name in lengths]
    result = soak(records, tmp_path, backend, EPOCHS, workers=2, num_segments=4, input_size=32, batch_size=2,
                  progress=False)
    assert (result.backend, result.epochs, result.clips_per_epoch, result.workers) == (backend, EPOCHS, 6, 2)
    assert len(result.worker_rss_by_epoch_mb) == EPOCHS
    assert result.worker_rss_by_epoch_mb[0] == result.worker_rss_start_mb
    assert result.worker_rss_by_epoch_mb[-1] == result.worker_rss_end_mb
    assert all(len(epoch) == 2 and min(epoch) > 0 for epoch in result.worker_rss_by_epoch_mb)
    assert result.max_worker_growth_mb < BOUND_MB, result.as_dict()
