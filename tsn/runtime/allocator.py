"""How a process that runs tsn allocates memory on the CPU: large blocks are kept for reuse, not returned.

glibc's malloc gives every block above its mmap threshold (at most 32 MB) a mapping of its own and
unmaps it on free. A training step allocates and frees the same large activations over and over, so
each of them was faulted in and zeroed by the kernel again on every step: the process spent about half
its CPU time in the kernel (README, Performance, "The allocator"). Two strategies keep those blocks:

- ``mimalloc`` (the tools' default on Linux): ``tools/*.py`` start again at once (``os.execv``, before
  torch is imported) with mimalloc preloaded (``LD_PRELOAD``; the library comes with the
  ``cmeel-mimalloc`` requirement) and told to keep freed memory (``MIMALLOC_PURGE_DELAY=-1``) in large
  OS pages. Its large blocks live apart from the small ones, so the heap does not fragment: resident
  memory stays near the live peak. Every process a tool starts inherits it: loader workers, spawned
  pools, torchrun's ranks.
- ``glibc`` (wherever a process cannot start again: ``import tsn`` in pytest, a notebook, a script of
  the user's, or a tool where mimalloc is missing): ``mallopt`` tells glibc to serve every block from its
  heap (``M_MMAP_MAX`` 0), never to trim it, and to grow it in steps of 256 MB. As fast, but the heap
  fragments: up to about 1.4 times the live peak resident for a ResNet-50 step (README).

``TSN_ALLOCATOR`` chooses: ``mimalloc`` (default), ``glibc`` (the second everywhere) or ``system``
(glibc's defaults, nothing changed). Neither strategy changes what is computed, only where blocks come
from. ``strategy()`` says which one this process runs with; the training and test logs print it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import sys
from pathlib import Path

ENV = "TSN_ALLOCATOR"
CHOICES = ("mimalloc", "glibc", "system")
# Set in the environment of a tool started again with mimalloc: it is never started a third time, even
# where the loader could not preload the library.
RELAUNCHED = "TSN_ALLOCATOR_RELAUNCHED"
# mimalloc's options for a training process: keep freed memory instead of returning it (the point), and
# commit its arenas at once in large OS pages (fewer faults where the kernel gives them).
MIMALLOC_OPTIONS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ARENA_EAGER_COMMIT": "1",
                    "MIMALLOC_ALLOW_LARGE_OS_PAGES": "1"}
# mallopt parameter numbers (malloc.h), and the values of the glibc strategy
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # the largest int mallopt takes
TOP_PAD = 256 * 2**20  # address space only: untouched pages of the pad are never resident
TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"

_strategy = "system: glibc's defaults (not configured yet)"


def strategy() -> str:
    """The active strategy, as the logs print it: ``mimalloc: ...``, ``glibc: ...`` or ``system: ...``."""
    return _strategy


def configure() -> str:
    """Apply the strategy ``TSN_ALLOCATOR`` names to this process (``import tsn`` calls it); returns ``strategy()``.

    In a tool (``tools/*.py``) with the ``mimalloc`` strategy this does not return: the tool starts again
    with mimalloc preloaded. An unknown value keeps glibc's defaults and the strategy names it (this runs at
    import, where an error would stop every tool before it could say why)."""
    global _strategy
    choice = os.environ.get(ENV, "mimalloc").strip().lower() or "mimalloc"
    if mimalloc_loaded():
        _strategy = f"mimalloc: preloaded, freed memory kept for reuse ({ENV}=system turns it off)"
    elif choice not in CHOICES:
        _strategy = f"system: {ENV}={choice!r} is not one of {', '.join(CHOICES)}, glibc's defaults are kept"
    elif choice == "system":
        _strategy = f"system: glibc's defaults ({ENV}=system)"
    else:
        if choice == "mimalloc" and _is_tool() and RELAUNCHED not in os.environ:
            library = mimalloc_library()
            if library is not None:
                _relaunch_with(library)  # does not return
        _strategy = _keep_glibc_blocks()
        if choice == "mimalloc" and _is_tool():
            _strategy += " (mimalloc was asked for but could not be preloaded)"
    return _strategy


def mimalloc_loaded() -> bool:
    """Whether mimalloc is mapped into this process (preloaded)."""
    try:
        return "libmimalloc" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def mimalloc_library() -> Path | None:
    """The shared mimalloc of the ``cmeel-mimalloc`` requirement, on Linux; None where it is not installed."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        files = importlib.metadata.distribution("cmeel-mimalloc").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = sorted((f for f in files if f.name.startswith("libmimalloc.so")), key=lambda f: len(f.name))
    if not found:
        return None
    path = Path(found[0].locate()).resolve()
    return path if path.is_file() else None


def _is_tool() -> bool:
    """Whether this process runs one of this project's ``tools/*.py`` as its main script: a script in a folder
    ``tools`` beside a ``tsn`` package (the repository, whether tsn is installed editable or not)."""
    main = sys.argv[0] if sys.argv else ""
    if not main.endswith(".py"):
        return False
    folder = Path(main).resolve().parent
    return folder == TOOLS_DIR or (folder.name == "tools" and (folder.parent / "tsn" / "runtime" / "allocator.py").is_file())


def _relaunch_with(library: Path) -> None:
    """Start this process's command again with ``library`` preloaded and mimalloc's options set."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, (str(library), env.get("LD_PRELOAD", ""))))
    for key, value in MIMALLOC_OPTIONS.items():
        env.setdefault(key, value)
    env[RELAUNCHED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _keep_glibc_blocks() -> str:
    """The glibc strategy through ``mallopt``; returns its description (``system: ...`` where it cannot apply)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return "system: the C library is not glibc, its allocator is used as it is"
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    if not all(libc.mallopt(param, value) == 1 for param, value in settings):
        return "system: glibc refused mallopt"
    return f"glibc: the heap keeps large blocks for reuse (no mapping per block, no trim; {ENV}=system turns it off)"
