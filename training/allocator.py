"""Use jemalloc for the CLI entry points when it is installed (no hard requirement).

With glibc's allocator, large freed tensors go back to the OS and are faulted in again on the
next step; with PyTorch that can be a large share of a CPU training step. jemalloc with decay
disabled keeps the pages. ``maybe_use_jemalloc()`` re-executes the current command once with
``LD_PRELOAD`` set; ``FLOWDIS_ALLOCATOR=system`` turns it off. Import nothing heavy here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
)
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def find_allocator() -> str | None:
    """Path of an installed jemalloc (or tcmalloc) shared library, if any."""
    for path in _CANDIDATES:
        if Path(path).is_file():
            return path
    return None


def active_allocator() -> str:
    """'jemalloc', 'tcmalloc' or 'system' for the current process."""
    pre = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in pre:
        return "jemalloc"
    if "tcmalloc" in pre:
        return "tcmalloc"
    return "system"


def maybe_use_jemalloc() -> None:
    """Re-exec this process with jemalloc preloaded when available and not yet active."""
    if os.environ.get("FLOWDIS_ALLOCATOR", "") == "system" or active_allocator() != "system":
        return
    if os.environ.get("_FLOWDIS_REEXEC") or sys.platform != "linux":
        return
    lib = find_allocator()
    if lib is None:
        return
    env = dict(os.environ, _FLOWDIS_REEXEC="1")
    env["LD_PRELOAD"] = (lib + " " + env.get("LD_PRELOAD", "")).strip()
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    try:
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    except OSError:
        return
