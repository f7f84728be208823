"""Progress reporting that suits where the output goes.

On a terminal: a tqdm bar. On a file or a pipe (a log, ``| tee``, a batch job): a carriage
return redraws nothing there, so tqdm's updates pile up as thousands of fragments (megabytes in a
long run's log); instead one plain line is printed every ``every_percent`` percent and at the end.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm


class PlainProgress:
    """tqdm's small surface (``update``, ``set_postfix``, ``write``, ``close``), as lines."""

    def __init__(self, total: int, desc: str, initial: int = 0, unit: str = "it",
                 file: IO[str] | None = None, every_percent: float = 5.0) -> None:
        self.total, self.n, self.desc, self.unit = max(int(total), 0), int(initial), desc, unit
        self.file = file if file is not None else sys.stderr
        self.every = max(1, round(self.total * every_percent / 100)) if self.total else 1
        self.postfix: dict[str, Any] = {}
        self._t0 = time.time()
        self._start = self.n
        self._next = (self.n // self.every + 1) * self.every
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self._next or (self.total and self.n >= self.total):
            self._line()
            self._next = (self.n // self.every + 1) * self.every

    def set_postfix(self, values: dict | None = None, **kw: Any) -> None:
        self.postfix = {**(values or {}), **kw}

    def write(self, text: str, file: IO[str] | None = None) -> None:
        print(text, file=file or self.file, flush=True)

    def _line(self) -> None:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        done = self.n - self._start
        rate = done / max(time.time() - self._t0, 1e-9)
        post = "".join(f", {k} {v}" for k, v in self.postfix.items())
        total = f"/{self.total}" if self.total else ""
        print(f"{self.desc}: {self.n}{total} {self.unit}{pct}, {rate:.2f} {self.unit}/s{post}",
              file=self.file, flush=True)

    def close(self) -> None:
        if not self._closed and self.n != self._next - self.every:
            self._line()  # the final position, unless it was just printed
        self._closed = True


def progress(total: int, desc: str, initial: int = 0, unit: str = "it",
             file: IO[str] | None = None, enabled: bool = True):
    """A progress reporter on ``file`` (default stderr): tqdm when it is a terminal, else
    :class:`PlainProgress`; ``None`` when disabled."""
    if not enabled:
        return None
    file = file if file is not None else sys.stderr
    if getattr(file, "isatty", lambda: False)():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                    file=file)
    return PlainProgress(total, desc, initial=initial, unit=unit, file=file)
