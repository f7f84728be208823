"""Per-image work spread over the CPU's cores in threads.

OpenCV, numpy's array arithmetic and Pillow's decoders release the GIL, so a list of
independent image jobs (a seamless clone per frame, an SSIM per frame) runs on two cores in
about half the time. Every item is computed exactly as it would be alone, in its own thread,
so the values do not depend on the number of workers; only the wall time does.

Work that holds the GIL (dlib's networks) goes to :func:`helper_process` instead: one worker
process, so that it runs beside this process's own work.

The number of workers follows PyTorch's intra-op thread count where PyTorch is loaded (so
``--threads 1`` keeps a run on one core), else the cores this process may use. A map called
from inside a worker runs serially (no pool waits on itself).
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

__all__ = ["Helper", "HelperDied", "Later", "helper_process", "thread_imap", "thread_map", "workers"]

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


class HelperDied(RuntimeError):
    """The helper process ended before answering."""


class Helper:
    """One worker process (:func:`_serve`) that computes ``fn(*args)`` sent to
    it, pickled, over a pipe. Unlike ``multiprocessing``'s spawned workers it does not import
    the caller's ``__main__`` script again, so a script without an ``if __name__ ==
    "__main__"`` guard is safe. ``fn`` must be importable by name (a module-level function or a
    ``functools.partial`` of one)."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from faces.parallel import _serve; _serve()"], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._futures: dict[int, Future] = {}
        self._next = 0
        self._closed = False  # set by the reader when the helper's answers end
        self._lock = threading.Lock()
        # requests go through a queue and a writer thread: the caller never waits for the
        # helper to finish its current item before it can hand over the next
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=t, name=f"faces-helper-{t.__name__[1:]}",
                                          daemon=True) for t in (self._read, self._write)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable, *args) -> Future:
        """A future of ``fn(*args)`` computed in the helper; ``HelperDied`` when it has ended."""
        future: Future = Future()
        with self._lock:
            if not self._alive():
                raise HelperDied("the helper process has ended")
            key, self._next = self._next, self._next + 1
            self._futures[key] = future
        self._outbox.put((key, fn, args))
        return future

    def _write(self) -> None:
        while (item := self._outbox.get()) is not None:
            try:
                pickle.dump(item, self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                break  # the helper has ended: the reader fails what still waits
            except Exception as exc:  # noqa: BLE001 - this request cannot be pickled
                with self._lock:
                    future = self._futures.pop(item[0], None)
                if future is not None:
                    future.set_exception(exc)
        try:
            self._proc.stdin.close()
        except OSError:
            pass

    def _read(self) -> None:
        try:
            while True:
                key, ok, value = pickle.load(self._proc.stdout)
                with self._lock:
                    future = self._futures.pop(key)
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        with self._lock:  # the helper ended: whoever still waits is told so
            self._closed = True
            left, self._futures = list(self._futures.values()), {}
        self._outbox.put(None)  # and the writer ends
        for future in left:
            future.set_exception(HelperDied("the helper process ended before answering"))

    def close(self) -> None:
        """Let the helper finish what it was sent and end."""
        self._outbox.put(None)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    def _alive(self) -> bool:
        return not self._closed and self._proc.poll() is None

    def alive(self) -> bool:
        """Whether the helper still answers."""
        with self._lock:
            return self._alive()

    @property
    def pid(self) -> int:
        return self._proc.pid


_HELPER: Helper | None = None


def helper_process() -> Helper | None:
    """The :class:`Helper`, started on first use and shared by this whole process, for work
    that holds the GIL (dlib's networks) and would otherwise stop every thread; ``None`` where
    :func:`workers` is 1 or no child process can be started (the caller then computes in
    place)."""
    global _HELPER
    if workers() < 2:
        return None
    with _LOCK:
        if _HELPER is None or not _HELPER.alive():
            try:
                _HELPER = Helper()
            except OSError:  # no child process can start here: compute in place
                _HELPER = None
                return None
            atexit.register(_HELPER.close)
        return _HELPER


def _serve() -> None:
    """The helper's loop: read ``(key, fn, args)``, answer ``(key, ok, value or error)``."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the work prints goes to stderr, not into the answers
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    while True:
        try:
            key, fn, args = pickle.load(requests)
        except EOFError:
            return
        try:
            answer = (key, True, fn(*args))
        except Exception as exc:  # noqa: BLE001 - sent back, raised by the caller's get()
            answer = (key, False, exc)
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an error that cannot be pickled
            data = pickle.dumps((key, False, RuntimeError(repr(exc))))
        channel.write(data)
        channel.flush()


class Later:
    """``fn(*args)``, running in :func:`helper_process` (or computed at once without one);
    :meth:`get` waits for it. Should the helper die, the value is computed here instead."""

    def __init__(self, fn: Callable, *args) -> None:
        self.fn, self.args = fn, args
        self._done, self._value = False, None
        pool = helper_process()
        self._future: Future | None = None
        if pool is not None:
            try:
                self._future = pool.submit(fn, *args)
                # the arguments are kept only for computing here, should the helper die
                self._future.add_done_callback(self._answered)
            except HelperDied:  # it has ended: compute here
                self._future = None
        if self._future is None:
            self._set(fn(*args))

    def _answered(self, future: Future) -> None:
        if future.exception() is None:
            self.args = ()

    def _set(self, value) -> None:
        self._value, self._done, self.args = value, True, ()

    def get(self):
        """The value (waits for the helper)."""
        if not self._done:
            try:
                value = self._future.result()
            except HelperDied:
                value = self.fn(*self.args)
            self._set(value)
        return self._value

