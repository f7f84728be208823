"""Per-image work spread over the CPU's cores in threads.

OpenCV, numpy's array arithmetic and Pillow's decoders release the GIL, so a list of
independent image jobs (a seamless clone per frame, an SSIM per frame) runs on two cores in
about half the time. Every item is computed exactly as it would be alone, in its own thread,
so the values do not depend on the number of workers; only the wall time does.

The number of workers follows PyTorch's intra-op thread count where PyTorch is loaded (so
``--threads 1`` keeps a run on one core), else the cores this process may use. A map called
from inside a worker runs serially (no pool waits on itself).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

__all__ = ["thread_imap", "thread_map", "workers"]

T = TypeVar("T")
R = TypeVar("R")

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_LOCK = threading.Lock()
_INSIDE = threading.local()


def workers() -> int:
    """How many threads the maps use: PyTorch's intra-op thread count when PyTorch is loaded,
    else the cores this process may run on."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return max(1, int(torch.get_num_threads()))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or _POOL_SIZE != n:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="faces-parallel",
                                       initializer=_mark_inside)
            _POOL_SIZE = n
        return _POOL


def _mark_inside() -> None:
    _INSIDE.flag = True


def _serial() -> bool:
    return getattr(_INSIDE, "flag", False) or workers() < 2


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, the calls spread over :func:`workers` threads (results in
    order; the first item's exception is raised once every call has ended)."""
    items = list(items)
    if len(items) < 2 or _serial():
        return [fn(x) for x in items]
    futures = [_pool(workers()).submit(fn, x) for x in items]
    wait(futures)
    return [f.result() for f in futures]


def thread_imap(fn: Callable[[T], R], items: Iterable[T], ahead: int | None = None
                ) -> Iterator[R]:
    """``fn(x) for x in items`` in order, with up to ``ahead`` (default :func:`workers`) calls
    running ahead of the consumer in threads: the next items are prepared while the caller
    works on this one. Items are drawn from ``items`` lazily."""
    if _serial():
        yield from (fn(x) for x in items)
        return
    ahead = max(1, ahead or workers())
    pool = _pool(workers())
    pending: deque = deque()
    it = iter(items)
    try:
        for x in it:
            pending.append(pool.submit(fn, x))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # a consumer that stops early: the calls still queued are dropped
        for f in pending:
            f.cancel()
