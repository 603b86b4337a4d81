"""What the benchmarks share: resident memory measured from outside a process tree, with
psutil (a dev/bench dependency, never the library's; benchmarks/*.py and
tests/test_stream_cli.py), commands run under that watch, and big random inputs."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

import numpy as np


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


def run_watched(cmd: list[str], cwd) -> tuple[float, dict[int, int], str]:
    """Run ``cmd`` in ``cwd`` watched by watch_rss: (wall s, peak resident bytes by pid, its
    output — stdout and stderr, through a file so a chatty command never blocks on a full
    pipe).  A failing command ends the benchmark with the tail of its output."""
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
        seen = watch_rss(proc)
        wall = time.perf_counter() - t0
        log.seek(0)
        text = log.read()
    if proc.returncode != 0:
        sys.exit(f"{cmd[:4]} failed ({proc.returncode}):\n{text[-3000:]}")
    return wall, seen, text


def write_random_npy(path, rows: int, cols: int) -> None:
    """A rows x cols float32 .npy of uniform noise, written 64 MiB at a time (never whole in memory)."""
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols))
    rng = np.random.default_rng(0)
    step = max(1, (64 << 20) // (4 * cols))
    for r0 in range(0, rows, step):
        x[r0:r0 + step] = rng.random((min(step, rows - r0), cols), dtype=np.float32)
    x.flush()
