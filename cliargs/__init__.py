"""Validated command-line values, shared by every script, generator and model recipe.

argparse ``type=`` functions that refuse what cannot work with one line naming the value:
negative counts (Python would take them as slices from the end), non-integral numbers for
whole-number options (``n_flow: 2.5`` in a config file must not become 2), NaN and infinity for
real-valued options, and sizes above :data:`MAX_SIZE` (an image side that cannot fit in memory,
refused before anything is allocated). argparse adds the flag's name: ``train.py: error:
argument --batch: must be a whole number >= 1, not -2``.

A value a config file gives (``train.py --config``) goes through the same function; the
``ValueError`` it raises then names the file and the key.

:func:`os_error_line` turns an ``OSError`` on the user's files (a full disk, a file where a
folder belongs) into one line with the fix, for every script's error report.

Kept free of every other package of the project (every layer may import it) and of torch.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_SIZE = 8192
"""The largest image side any size flag accepts (px). One 8192 x 8192 RGB frame is 192 MiB as
uint8 and 768 MiB as float32; larger sides cannot be worked on in memory."""

MAX_MODEL_SIZE = 1024
"""The largest side a model is built or trained at (px): activations of a flow at 1024 px
already take tens of GiB per image."""


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A command-line or config-file value that cannot work (argparse prints its message
    after the flag's name; ``ValueError`` so that config-file readers catch it)."""


def _number(value: Any) -> float | int:
    if isinstance(value, bool):
        raise BadValue(f"must be a number, not {value!r}")
    if isinstance(value, (int, float)):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise BadValue(f"must be a number, not {value!r}") from None


def whole(lo: int | None = 0, hi: int | None = None, name: str = "") -> Callable[[Any], int]:
    """An argparse type: a whole number in ``[lo, hi]`` (either bound may be None). ``2.0``
    and ``"2"`` pass; ``2.5``, ``"nan"``, ``-1`` (with ``lo=0``) are refused."""

    def parse(value: Any) -> int:
        x = _number(value)
        if isinstance(x, float):
            if not math.isfinite(x) or not x.is_integer():
                raise BadValue(f"must be a whole number, not {value!r}")
            x = int(x)
        if lo is not None and x < lo:
            raise BadValue(f"must be a whole number >= {lo}, not {x}")
        if hi is not None and x > hi:
            raise BadValue(f"must be at most {hi}, not {x}"
                           + (" (larger sizes cannot fit in memory)" if hi in
                              (MAX_SIZE, MAX_MODEL_SIZE) else ""))
        return x

    parse.__name__ = name or ("whole number" if lo is None else f"whole number >= {lo}")
    return parse


positive_int = whole(1, name="positive_int")
"""A count where 0 means nothing sensible: at least 1."""
nonnegative_int = whole(0, name="nonnegative_int")
"""A count where 0 means what the flag's help says (off, all, the default)."""
image_size = whole(1, MAX_SIZE, name="image_size")
"""An image side in pixels: 1 to :data:`MAX_SIZE`."""
model_size = whole(1, MAX_MODEL_SIZE, name="model_size")
"""A model's working side in pixels: 1 to :data:`MAX_MODEL_SIZE`."""
MAX_GRID = 256
"""The most images one grid (sample grids, transfer tables, interpolations) is asked for."""
grid_count = whole(1, MAX_GRID, name="grid_count")
"""Images in one grid: 1 to :data:`MAX_GRID`."""
seed = whole(0, 2**32 - 1, name="seed")
"""A random seed (numpy's generators take 0 to 2^32 - 1)."""


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         name: str = "") -> Callable[[Any], float]:
    """An argparse type: a finite real number in ``[lo, hi]`` (``(lo, hi]`` with
    ``lo_open``). NaN and infinity are always refused."""

    def parse(value: Any) -> float:
        x = float(_number(value))
        if not math.isfinite(x):
            raise BadValue(f"must be a finite number, not {value!r}")
        if lo is not None and (x <= lo if lo_open else x < lo):
            raise BadValue(f"must be {'>' if lo_open else '>='} {lo:g}, not {x:g}")
        if hi is not None and x > hi:
            raise BadValue(f"must be at most {hi:g}, not {x:g}")
        return x

    parse.__name__ = name or "finite number"
    return parse


finite = real(name="finite_float")
"""Any finite real number."""
nonnegative = real(0.0, name="nonnegative_float")
"""A finite real number >= 0."""
positive = real(0.0, lo_open=True, name="positive_float")
"""A finite real number > 0."""


def add_no_progress(parser: argparse.ArgumentParser | Any, help: str = "hide the progress bars"
                    ) -> None:
    """``--no_progress`` and ``--no-progress`` (both spellings, in every script and mode),
    stored as ``progress=False``."""
    parser.add_argument("--no_progress", "--no-progress", dest="progress", action="store_false",
                        help=help)


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``; else physical memory; None when
    neither is known)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: int, what: str, fix: str) -> None:
    """Raise ValueError (one line: ``what``, the GiB needed and available, ``fix``) when
    ``nbytes`` exceed the memory available now; called before allocating."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ValueError(f"{what} needs {nbytes / 2**30:.1f} GiB of memory, "
                         f"{avail / 2**30:.1f} GiB are available; {fix}")


def os_error_line(exc: OSError) -> str:
    """An ``OSError`` from reading or writing the user's files as one line with the fix."""
    where = exc.filename or ""
    if exc.errno == errno.ENOSPC:
        return (f"{where or 'a file'}: no space left on the device; free some space, or "
                "write elsewhere (e.g. --result_dir / --checkpoint_dir / --out)")
    if exc.errno == errno.EDQUOT:
        return f"{where or 'a file'}: disk quota exceeded; free some space or write elsewhere"
    if isinstance(exc, NotADirectoryError) and where:
        blocker = next((p for p in Path(where).parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{where}: {blocker} is a file, not a folder; give a folder"
    if isinstance(exc, PermissionError):
        return f"{where or 'a file'}: permission denied; give a path you can read and write"
    reason = exc.strerror or str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{where}: {reason}" if where else str(reason)


def error_exit(exc: BaseException) -> int:
    """Report a failed job: one ``error: ...`` line on stderr (an ``OSError`` as
    :func:`os_error_line` says it), and the exit status 1."""
    print(f"error: {os_error_line(exc) if isinstance(exc, OSError) else exc}", file=sys.stderr)
    return 1
