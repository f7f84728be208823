"""faces.parallel: the same values in the same order on one thread or several, no pool waiting
on itself, and dlib's work in a helper process with the values it gives in place."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from faces import parallel
from faces.blend import mouth_mix, mouth_mix_many


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _busy(i: int) -> tuple[int, str]:
    x = np.random.default_rng(i).random((64, 64))
    return i, f"{float((x @ x).sum()):.12g}"


def test_workers_follow_torchs_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert parallel.workers() == 1
        torch.set_num_threads(3)
        assert parallel.workers() == 3
    finally:
        torch.set_num_threads(before)


def test_thread_map_and_imap_keep_order_and_values(two_threads):
    items = list(range(23))
    expect = [_busy(i) for i in items]
    assert parallel.thread_map(_busy, items) == expect
    assert list(parallel.thread_imap(_busy, iter(items))) == expect
    assert parallel.thread_map(_busy, []) == []


def test_thread_map_runs_in_threads_and_nested_maps_run_serially(two_threads):
    names = set()

    def outer(i):
        names.add(threading.current_thread().name)
        # a map inside a worker would wait on the pool it runs in: it runs in place instead
        return parallel.thread_map(lambda j: i * 10 + j, range(3))

    assert parallel.thread_map(outer, range(6)) == [[i * 10 + j for j in range(3)]
                                                    for i in range(6)]
    assert all(n.startswith("faces-parallel") for n in names)


def test_thread_map_raises_the_first_error(two_threads):
    def fail(i):
        if i in (3, 5):
            raise ValueError(f"item {i}")
        return i

    with pytest.raises(ValueError, match="item 3"):
        parallel.thread_map(fail, range(8))


def test_one_thread_means_no_pool_and_no_helper():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        main = threading.current_thread().name
        assert parallel.thread_map(lambda _: threading.current_thread().name,
                                   range(4)) == [main] * 4
        assert parallel.helper_process() is None
        later = parallel.Later(os.getpid)
        assert later.get() == os.getpid()  # computed here, at once
    finally:
        torch.set_num_threads(before)


def test_later_runs_in_the_helper_process_and_survives_its_death(two_threads):
    helper = parallel.helper_process()
    assert helper is not None and parallel.helper_process() is helper  # one, shared
    pid = parallel.Later(os.getpid).get()
    assert pid == helper.pid != os.getpid()
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(parallel.Later(np.flipud, img).get(), np.flipud(img))
    # its errors come back to the caller
    with pytest.raises(ValueError, match="invalid literal"):
        parallel.Later(int, "x").get()
    # it dies with work queued: the value is computed here instead (by a stand-in, so that the
    # test does not sleep)
    waiting = parallel.Later(time.sleep, 30)
    waiting.fn, waiting.args = (lambda: "computed here"), ()
    os.kill(pid, signal.SIGKILL)
    assert waiting.get() == "computed here"
    # and a new helper starts on the next call
    assert parallel.Later(np.fliplr, img).get().tolist() == np.fliplr(img).tolist()
    assert parallel.Later(os.getpid).get() not in (pid, os.getpid())


def test_no_helper_where_no_child_can_start(two_threads, monkeypatch):
    monkeypatch.setattr(parallel, "_HELPER", None)
    monkeypatch.setattr(parallel.sys, "executable", "/nonexistent/python")
    assert parallel.helper_process() is None
    assert parallel.Later(os.getpid).get() == os.getpid()  # computed here


def test_mouth_mix_many_equals_one_at_a_time(two_threads):
    rng = np.random.default_rng(1)
    q = rng.integers(40, 220, (64, 64, 3), dtype=np.uint8)
    srcs = [rng.integers(40, 220, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    many = mouth_mix_many(q, srcs)
    assert many.shape == (5, 64, 64, 3)
    for m, s in zip(many, srcs, strict=True):
        assert np.array_equal(m, mouth_mix(q, s))
