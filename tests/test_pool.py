"""The threads a call's tiles run on (engines/inprocess/helpers.py) and the result mappings kept for the
next call (engines/host.empty): what small calls no longer pay for, and what they must not
break — order, concurrency, errors, nesting, forked children, bounded memory."""

import multiprocessing
import threading

import numpy as np
import pytest

from haloconv.engines import host
from haloconv.engines.inprocess.helpers import KEPT, run_each


@pytest.mark.parametrize("concurrency", [1, 2, 3, KEPT + 2])
def test_run_each_keeps_order_and_reaches_exactly_its_concurrency(concurrency):
    active, peak, lock = [0], [0], threading.Lock()
    # the first `concurrency` items wait for one another: they can only pass together
    barrier = threading.Barrier(concurrency, timeout=10)

    def work(i):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        if i < concurrency:
            barrier.wait()
        with lock:
            active[0] -= 1
        return i * i

    items = list(range(3 * concurrency))
    assert run_each(work, items, concurrency) == [i * i for i in items]
    assert peak[0] == concurrency


def test_an_error_is_raised_in_the_caller_and_stops_the_items_not_started():
    started = []

    def work(i):
        started.append(i)
        if i == 2:
            raise KeyError("tile 2")
        return i

    with pytest.raises(KeyError, match="tile 2"):
        run_each(work, list(range(10)), 1)
    assert started == [0, 1, 2]
    with pytest.raises(KeyError):
        run_each(work, list(range(10)), 4)
    assert len(started) < 3 + 10  # no item starts once one has failed... unless already taken


def test_nested_and_concurrent_calls_finish():
    """Tiles that call run_each themselves, from more threads than the pool keeps: the
    callers work their own items, so none waits for a helper that cannot start."""
    def inner(j):
        return sum(run_each(lambda k: k + j, list(range(4))))

    results = [None] * (KEPT + 4)

    def caller(n):
        results[n] = run_each(inner, list(range(4)))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(not t.is_alive() for t in threads)
    assert results == [[6 + 4 * j for j in range(4)]] * len(results)


def _in_child(q):
    q.put(run_each(lambda i: i + 1, [1, 2, 3]))


def test_a_forked_child_gets_a_pool_of_its_own():
    run_each(lambda i: i, [0, 1])  # the parent's helpers exist before the fork
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_in_child, args=(q,))
    p.start()
    try:
        assert q.get(timeout=30) == [2, 3, 4]
    finally:
        p.join(timeout=30)
    assert p.exitcode == 0


def test_results_of_a_few_mib_reuse_a_freed_mapping_and_the_kept_ones_are_bounded():
    shape = (1, 1, 2048, 2048)  # 16 MiB of float32: between SMALL_PAGES_FROM and REUSED_UP_TO
    assert host.SMALL_PAGES_FROM <= 4 * np.prod(shape) <= host.REUSED_UP_TO
    a = host.empty(shape, np.float32)
    a.fill(1)
    address = a.ctypes.data
    view = a[0, 0, 5:]  # a view keeps the mapping in use
    del a
    b = host.empty(shape, np.float32)
    assert b.ctypes.data != address
    del view
    c = host.empty(shape, np.float32)
    assert c.ctypes.data == address and float(c[0, 0, 0, 0]) == 1.0  # the freed one, pages already in
    many = [host.empty(shape, np.float32) for _ in range(8)]
    del b, c, many
    kept = sum(n * len(ms) for n, ms in host._kept.items())
    assert 0 < kept <= host.KEPT_BYTES
    big = host.empty((1, 1, 4096, 4096), np.float32)  # 64 MiB: over REUSED_UP_TO, never kept
    del big
    assert sum(n * len(ms) for n, ms in host._kept.items()) == kept
