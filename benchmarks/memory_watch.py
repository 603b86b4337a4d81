"""Resident memory measured from outside a process tree, with psutil (a dev/bench
dependency, never the library's): benchmarks/out_of_core.py and tests/test_stream_cli.py."""

from __future__ import annotations

import time


def watch_rss(proc, interval: float = 0.005) -> dict[int, int]:
    """Until ``proc`` (a subprocess.Popen) exits: the peak resident bytes of it and of each
    of its descendants, sampled with psutil (a dev/bench dependency) every ``interval`` s."""
    import psutil

    root, seen = psutil.Process(proc.pid), {}
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                seen[p.pid] = max(seen.get(p.pid, 0), p.memory_info().rss)
        except psutil.Error:  # a process ended between the listing and the reading
            pass
        time.sleep(interval)
    return seen
