"""Use jemalloc for the CLI entry points when it is installed (no hard requirement).

With glibc's allocator, large freed tensors go back to the OS and are faulted in again on the
next step; with PyTorch that can be a large share of a CPU training step. jemalloc with decay
disabled keeps the pages. ``maybe_use_jemalloc()`` re-executes the current command once with
``LD_PRELOAD`` set; ``FLOWDIS_ALLOCATOR=system`` turns it off. Where jemalloc is not installed,
:func:`keep_freed_pages` tunes glibc's allocator in the process to much the same effect (not for
``--low_memory`` runs, whose heap it would grow), and neither is done for content-ae, whose
loop it made 3 % faster for more memory than the original's. Import nothing heavy here.
"""

from __future__ import annotations

import ctypes
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
# Models that keep the allocator as it ships: content-ae's training loop was measured 3 % faster
# with freed pages kept, for a peak 5-8 % higher, above the original implementation's; as it
# ships it stays 2.3x the original's speed with less memory (docs/performance.md)
SYSTEM_ALLOCATOR_MODELS = ("content-ae",)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


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


def keep_freed_pages() -> bool:
    """glibc: serve large blocks from the heap and keep freed memory for the next request.

    glibc hands every block above its mmap threshold (at most 32 MiB) to the kernel on free and
    maps it anew on the next request, so each step of a large model faults its activation
    buffers in again (a 16 x 512 x 32 x 32 float tensor is exactly 32 MiB). With mmap for large
    blocks off and the trim threshold at 1 GiB, freed pages stay in the heap: a training step of
    the 64-px Glow's first level took 1.2 s instead of 1.5 s, as with jemalloc, for a peak
    ~170 MiB higher (docs/performance.md). Returns whether the settings were applied: only under
    glibc's own allocator on Linux.
    """
    if sys.platform != "linux" or active_allocator() != "system":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1


def model_in_argv(argv: list[str]) -> str | None:
    """The value of ``--model M`` / ``--model=M`` in a command line, if any."""
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return None


def maybe_use_jemalloc() -> None:
    """Re-exec this process with jemalloc preloaded when available and not yet active; without
    jemalloc, :func:`keep_freed_pages` (not for ``--low_memory``). Neither for the models in
    ``SYSTEM_ALLOCATOR_MODELS``."""
    if os.environ.get("FLOWDIS_ALLOCATOR", "") == "system" or active_allocator() != "system":
        return
    if model_in_argv(sys.argv) in SYSTEM_ALLOCATOR_MODELS:
        return
    if os.environ.get("_FLOWDIS_REEXEC") or sys.platform != "linux":
        return
    lib = find_allocator()
    if lib is None:
        if "--low_memory" not in sys.argv:
            keep_freed_pages()
        return
    env = dict(os.environ, _FLOWDIS_REEXEC="1")
    env["LD_PRELOAD"] = (lib + " " + env.get("LD_PRELOAD", "")).strip()
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    try:
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    except OSError:
        return
