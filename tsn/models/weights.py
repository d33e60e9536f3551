"""Reading and loading state dicts: map_location="cpu", ``module.`` prefixes, one-line reports.

Nothing here downloads: pretrained files are looked up in the torch hub cache
(``torch.hub.get_dir()/checkpoints/``) or given as a path, and a missing file is an error
that names the file and the folder to put it in.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tsn.errors import UserError

logger = logging.getLogger("tsn.models")

MODULE_PREFIX = "module."  # what nn.DataParallel and DistributedDataParallel put before every key
_MAX_KEYS_LOGGED = 20


class PretrainedWeightsNotFound(UserError, FileNotFoundError):
    """A pretrained weight file that should be on disk is not; the message says where to put it."""


@dataclass(frozen=True)
class LoadReport:
    """Keys that did not load: in the model but not the file, in the file but not the model,
    and in both with different shapes (left at the model's values)."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """True when every key matched one to one."""
        return not (self.missing or self.unexpected or self.mismatched)


def hub_checkpoint_path(file_name: str) -> Path:
    """``torch.hub.get_dir()/checkpoints/<file_name>``: where torchvision keeps downloaded weights.

    ``torch.hub.get_dir()`` follows ``$TORCH_HOME`` (default ``~/.cache/torch``) at call time.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def resolve_weights_file(backbone: str, pretrained: str | os.PathLike, url: str | None = None) -> Path:
    """An explicit weights path that must exist; a missing one raises ``PretrainedWeightsNotFound``."""
    path = Path(pretrained).expanduser()
    if not path.is_file():
        source = f" (published at {url})" if url else ""
        raise PretrainedWeightsNotFound(
            f"pretrained weights for {backbone!r} not found: {path} is not a file{source}"
        )
    return path


def hub_weights_file(backbone: str, file_name: str, url: str) -> Path:
    """The cached file ``file_name`` for ``backbone``; raises ``PretrainedWeightsNotFound`` naming
    the exact file, the folder to put it in and where it is published. Never downloads."""
    path = hub_checkpoint_path(file_name)
    if not path.is_file():
        raise PretrainedWeightsNotFound(
            f"pretrained weights for {backbone!r} not found: put {file_name} (from {url}) into "
            f"{path.parent}/ or pass its path as pretrained"
        )
    return path


class _Opaque:
    """What a class or function of another package (a training log's record, a numpy array) in a checkpoint's
    metadata becomes: nothing of it runs, and its arguments and state are dropped."""

    def __new__(cls, *args: object, **kwargs: object) -> _Opaque:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


_FOREIGN_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_MAX_FOREIGN_GLOBALS = 64


def load_tensors_only(path: Path) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)``, except that the classes and functions of other
    packages it names (mmengine's ``HistoryBuffer`` and numpy arrays in an mmaction2 checkpoint's training log)
    load as inert ``_Opaque`` objects instead of failing the whole file: no code of the file ever runs."""
    stubs: list[tuple[type, str]] = []
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: plain weights-only loading
        return torch.load(path, map_location="cpu", weights_only=True)
    while True:
        try:
            with torch.serialization.safe_globals(stubs):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = _FOREIGN_GLOBAL.search(str(exc))
            if found is None or len(stubs) >= _MAX_FOREIGN_GLOBALS:
                raise
            # torch names a builtin without its module ("getattr", in numpy's pickles)
            name = found.group(1) if "." in found.group(1) else f"builtins.{found.group(1)}"
            if (_Opaque, name) in stubs:
                raise
            stubs.append((_Opaque, name))


def read_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict from a file (loaded with ``map_location="cpu"``, tensors only) or a mapping.

    A checkpoint that wraps the weights as ``{"state_dict": ...}`` or ``{"model": ...}`` is
    unwrapped. Anything else that is not a mapping of names to tensors raises ``ValueError``.
    """
    if isinstance(source, Mapping):
        return _unwrap(source, "state dict")
    return read_weights_file(source)[0]


def read_weights_file(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """``(state dict, the file's other top-level entries)`` of a weights file, e.g. an mmaction2 checkpoint's
    ``meta``; as ``read_state_dict``: a missing file is ``FileNotFoundError``, a bad one ``ValueError``."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        obj = load_tensors_only(path)
    except Exception as exc:  # corrupt, truncated, not a torch file, or more than tensors inside
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {first_line})") from exc
    state = _unwrap(obj, str(path))
    rest = {k: v for k, v in obj.items() if k not in ("state_dict", "model")} if isinstance(obj, Mapping) else {}
    return state, {str(k): v for k, v in rest.items() if not isinstance(v, torch.Tensor)}


def _unwrap(obj: object, label: str) -> dict[str, torch.Tensor]:
    """The state dict in ``obj`` (itself, or its ``state_dict`` or ``model`` entry); ``ValueError`` naming ``label``."""
    if isinstance(obj, Mapping):
        for wrapper_key in ("state_dict", "model"):
            inner = obj.get(wrapper_key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{label}: not a state dict of tensors (found {keys})")
    return dict(obj)


def match_module_prefix(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Strip or add the ``module.`` prefix so that the keys match how ``model`` is wrapped.

    A checkpoint saved from DataParallel/DDP loads into a plain model and the other way round.
    """
    model_keys = list(model.state_dict())
    model_wrapped = bool(model_keys) and all(k.startswith(MODULE_PREFIX) for k in model_keys)
    file_wrapped = bool(state_dict) and all(k.startswith(MODULE_PREFIX) for k in state_dict)
    if file_wrapped and not model_wrapped:
        return {k[len(MODULE_PREFIX):]: v for k, v in state_dict.items()}
    if model_wrapped and not file_wrapped:
        return {MODULE_PREFIX + k: v for k, v in state_dict.items()}
    return dict(state_dict)


def _key_list(keys: tuple[str, ...]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_LOGGED])
    more = f", ... (+{len(keys) - _MAX_KEYS_LOGGED} more)" if len(keys) > _MAX_KEYS_LOGGED else ""
    return f"{len(keys)} [{shown}{more}]"


def load_state_dict_flexible(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    strict: bool = False,
) -> LoadReport:
    """Load ``source`` (a path or a state dict) into ``model`` and return what did not match.

    ``module.`` prefixes are matched to the model; tensors whose shape differs from the model's
    are skipped (e.g. a classifier trained for another number of classes). With ``strict=False``
    any missing, unexpected or mismatched keys are reported in one warning on logger
    ``tsn.models``; with ``strict=True`` the same line is raised as ``ValueError``.
    """
    label = "state dict" if isinstance(source, Mapping) else str(source)
    state_dict = match_module_prefix(read_state_dict(source), model)
    own = model.state_dict()
    mismatched = tuple(k for k, v in state_dict.items() if k in own and own[k].shape != v.shape)
    to_load = {k: v for k, v in state_dict.items() if k not in mismatched}
    result = model.load_state_dict(to_load, strict=False)
    report = LoadReport(
        missing=tuple(k for k in result.missing_keys if k not in mismatched),
        unexpected=tuple(result.unexpected_keys),
        mismatched=mismatched,
    )
    if not report.complete:
        parts = [f"{label}: loaded {len(to_load) - len(report.unexpected)} of {len(own)} tensors"]
        if report.missing:
            parts.append(f"missing {_key_list(report.missing)}")
        if report.unexpected:
            parts.append(f"unexpected {_key_list(report.unexpected)}")
        if report.mismatched:
            shapes = ", ".join(f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:5])
            parts.append(f"shape-mismatched {_key_list(report.mismatched)} (file vs model: {shapes})")
        line = "; ".join(parts)
        if strict:
            raise ValueError(line)
        logger.warning(line)
    return report
