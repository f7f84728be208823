"""The entry points' allocator choice: jemalloc by re-exec, else glibc tuned in the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A child process that reports how many bytes glibc holds in mmap'd blocks while a 40 MiB
# buffer is alive (mallinfo2's hblkhd): 0 when large blocks come from the heap.
_PROBE = """
import ctypes, sys
sys.path.insert(0, {root!r})
from training import allocator
allocator.find_allocator = lambda: None  # as on a machine without jemalloc
sys.argv = ["train.py"] + {argv!r}
allocator.maybe_use_jemalloc()

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
buf = bytearray(40 << 20)
print(libc.mallinfo2().hblkhd)
"""


def _mmapped_bytes(argv: list[str], **env: str) -> int:
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("LD_PRELOAD", "FLOWDIS_ALLOCATOR", "_FLOWDIS_REEXEC")}
    child_env.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT), argv=argv)],
                         env=child_env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def _glibc_with_mallinfo2() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018 - glibc >= 2.33
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc's mallinfo2")
def test_without_jemalloc_large_blocks_stay_in_the_heap() -> None:
    assert _mmapped_bytes(["--iter", "5"]) < 40 << 20  # (blocks mapped before the call stay)
    # untouched: with the switch off, and for --low_memory (whose heap it would grow)
    assert _mmapped_bytes(["--iter", "5"], FLOWDIS_ALLOCATOR="system") >= 40 << 20
    assert _mmapped_bytes(["--low_memory"]) >= 40 << 20
    # content-ae keeps glibc as it ships (less memory than the original; docs/performance.md)
    assert _mmapped_bytes(["--model", "content-ae", "-n", "x"]) >= 40 << 20
    assert _mmapped_bytes(["--model=content-ae"]) >= 40 << 20
    assert _mmapped_bytes(["--model", "glow", "-n", "x"]) < 40 << 20


def test_keep_freed_pages_leaves_other_allocators_alone(monkeypatch) -> None:
    from training import allocator

    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert allocator.active_allocator() == "jemalloc"
    assert allocator.keep_freed_pages() is False
