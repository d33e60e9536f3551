"""Crash-safe checkpoints and RNG state.

``save_checkpoint`` writes a temporary file in the target's folder, flushes and fsyncs it, then
renames it over the target (``os.replace`` is atomic) and fsyncs the folder, so a crash at any
moment leaves either the old or the new checkpoint, never half of one. Before the rename the
previous checkpoint becomes ``<stem>.prev<suffix>`` (``latest.prev.pth``), so that a file that
is corrupt anyway (a disk fault, a copy cut short) still leaves one good checkpoint to resume
from: ``load_latest_good`` tries ``latest.pth``, reports a truncated or corrupt one, and falls
back to ``latest.prev.pth``.

Checkpoints are read with ``torch.load(map_location="cpu", weights_only=True)``: a state must
hold only tensors and plain Python values (dict, list, tuple, str, int, float, bool, None);
``capture_rng_state`` returns such values.
"""

from __future__ import annotations

import logging
import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsn.errors import UserError
from tsn.fileio import atomic_write

logger = logging.getLogger(__name__)

LATEST = "latest.pth"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def previous_path(path: str | os.PathLike[str]) -> Path:
    """Where the checkpoint before ``path`` is kept: ``W/latest.pth`` -> ``W/latest.prev.pth``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _is_complete_zip(path: Path) -> bool:
    """Cheap truncation check: ``torch.save`` writes a zip whose directory sits at the very end."""
    try:
        with zipfile.ZipFile(path) as archive:
            return len(archive.namelist()) > 0
    except (OSError, zipfile.BadZipFile):
        return False


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str], keep_previous: bool = True) -> None:
    """Write ``state`` to ``path`` atomically; with ``keep_previous`` the old file becomes ``previous_path``.

    The old file is only kept as the previous one when it is structurally complete, so a
    truncated file never replaces a good previous checkpoint. Temporary files left by a process
    killed in the middle of an earlier save of the same ``path`` are removed first (one writer
    per path: only rank 0 saves).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    if keep_previous and path.exists():
        if _is_complete_zip(path):
            # A hard link then a rename: ``path`` exists at every instant, and so does a previous one.
            link_tmp = path.with_name(f".{path.name}.link.tmp")
            try:
                os.link(path, link_tmp)
                os.replace(link_tmp, previous_path(path))
            except OSError:  # no hard links on this file system: copy the bytes instead
                link_tmp.unlink(missing_ok=True)
                data = path.read_bytes()
                atomic_write(previous_path(path), lambda handle: handle.write(data))
        else:
            logger.warning("%s: truncated or corrupt; not kept as %s", path, previous_path(path).name)
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; CheckpointError naming the file and why it is unusable."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "file not found")
    if path.is_dir():
        raise CheckpointError(path, "is a directory, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "empty file (0 bytes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad bytes
        if not _is_complete_zip(path):
            raise CheckpointError(path, f"truncated or corrupt: not a complete torch.save archive ({size} bytes)") from None
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else ""
        raise CheckpointError(path, f"cannot be loaded ({type(exc).__name__}: {first_line})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"expected a dict, got {type(state).__name__}")
    return state


def load_latest_good(work_dir: str | os.PathLike[str], name: str = LATEST) -> tuple[dict[str, Any], Path]:
    """``(state, path)`` of ``work_dir/name``, or of its previous copy when that one is unusable.

    A truncated, corrupt or missing latest checkpoint is logged with the reason; CheckpointError
    (naming both files) when neither can be loaded.
    """
    latest = Path(work_dir) / name
    previous = previous_path(latest)
    try:
        return load_checkpoint(latest), latest
    except CheckpointError as latest_error:
        if not previous.exists():
            raise
        logger.warning("%s; resuming from the previous checkpoint %s", latest_error, previous)
        try:
            return load_checkpoint(previous), previous
        except CheckpointError as previous_error:
            raise CheckpointError(latest, f"{latest_error.reason}; and {previous_error}") from None


def capture_rng_state() -> dict[str, Any]:
    """States of Python's ``random``, numpy's global RNG, torch's CPU RNG and every CUDA device's RNG.

    Plain values and tensors only, so that it loads with ``weights_only=True``. Per process:
    under DDP each rank has its own states.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``; CUDA states are restored for the devices present."""
    random.setstate(_as_tuples(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda", [])
    if cuda_states and torch.cuda.is_available():
        count = min(len(cuda_states), torch.cuda.device_count())
        for device in range(count):
            torch.cuda.set_rng_state(cuda_states[device], device)


def _as_tuples(value: Any) -> Any:
    """Lists back to tuples (``random.setstate`` wants tuples; some serialisers give lists)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(item) for item in value)
    return value


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """State of a numpy Generator (e.g. the one mixup draws from) as plain values.

    Plain for ``np.random.default_rng`` (PCG64: ints only), so it loads with ``weights_only=True``.
    """
    return rng.bit_generator.state


def set_generator_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore ``generator_state`` output into ``rng`` (same bit generator type)."""
    rng.bit_generator.state = state


# What a checkpoint saved before a key existed was trained with: every model was a TSN before model.temporal.
ABSENT_KEYS: dict[str, Any] = {"model.temporal": "none"}


def check_trained_with(state: dict[str, Any], path: str | os.PathLike[str], settings: dict[str, Any]) -> None:
    """Refuse a checkpoint whose saved config (``state["config"]``, written by the trainer) differs from
    ``settings`` (dotted key -> the value the caller will use) on any key: the weights would load
    (same tensors) and silently compute something else, e.g. an ``avg``-trained head under ``feature_max``
    after a change of the defaults. A checkpoint without a saved config (a bare state dict) passes; a key its
    config does not have (saved before the key existed) counts as ``ABSENT_KEYS`` says, where it says."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        return
    for key, value in settings.items():
        section, _, name = key.partition(".")
        trained = saved.get(section, {}).get(name) if isinstance(saved.get(section), dict) else None
        trained = ABSENT_KEYS.get(key) if trained is None else trained
        if trained is not None and trained != value:
            raise CheckpointError(path, f"trained with {key}: {trained}, but the config says {value}: pass "
                                        f"--opt {key}={trained} or the run's own config.yaml")


def inference_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights to test or deploy from a loaded checkpoint: the weight average (``state["ema"]``, written
    with ``train.ema_decay``) when there is one, else ``state["model"]``, else ``state`` itself (a bare
    state dict)."""
    if isinstance(state.get("ema"), dict) and isinstance(state["ema"].get("model"), dict):
        return state["ema"]["model"]
    if isinstance(state.get("model"), dict):
        return state["model"]
    return state
