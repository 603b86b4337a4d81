"""The threads a call's tiles run on: kept for the life of the process, the caller one of them.

Starting a thread costs about what filtering a small image does, so a small call that
started its threads anew paid for them every time (issue 28).  ``run_each`` runs work on
items with at most ``concurrency`` of them at once: the calling thread works too, and
helpers from a pool kept by this module pull the items left from one shared queue.

Why this cannot deadlock when calls nest or many threads call at once: the caller pulls
items itself until none is left, so it never waits for a helper that has not started; once
the items are taken it cancels the helpers still queued and waits only for those running,
each of which is finishing an item it took.  A forked child (a worker process) gets a pool
of its own: the parent's threads are not in it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# helpers kept: enough for a call per core beside the caller, and a few calls at once
KEPT = 2 * (os.cpu_count() or 1) + 2

_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the pid that made it, the pool)


def helpers() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(KEPT, thread_name_prefix="haloconv"))
        return _pool[1]


def run_each(work: Callable[[T], R], items: Sequence[T], concurrency: int | None = None) -> list[R]:
    """``[work(item) for item in items]``, at most ``concurrency`` at once (default: all),
    on this thread and the kept helpers; the first exception raised is raised here, after
    the items being worked on are done (no item starts after it)."""
    n = len(items)
    concurrency = n if concurrency is None else max(1, min(concurrency, n))
    if concurrency == 1:
        return [work(item) for item in items]
    if concurrency - 1 > KEPT:  # more at once than the pool keeps: threads of this call's own
        with ThreadPoolExecutor(concurrency - 1, thread_name_prefix="haloconv") as ex:
            return _share(work, items, concurrency, ex)
    return _share(work, items, concurrency, helpers())


def _share(work, items, concurrency: int, ex: ThreadPoolExecutor) -> list:
    results: list = [None] * len(items)
    state = {"next": 0, "error": None}
    lock = threading.Lock()

    def pull() -> None:
        while True:
            with lock:
                i = state["next"]
                if i >= len(items) or state["error"] is not None:
                    return
                state["next"] = i + 1
            try:
                results[i] = work(items[i])
            except BaseException as e:  # noqa: BLE001 - raised again in the caller
                with lock:
                    if state["error"] is None:
                        state["error"] = e
                return

    helpers = [ex.submit(pull) for _ in range(concurrency - 1)]
    pull()
    for h in helpers:
        if not h.cancel():  # running (or done): it finishes the item it took
            h.result()
    if state["error"] is not None:
        raise state["error"]
    return results
