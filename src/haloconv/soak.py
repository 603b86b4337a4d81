"""Soak: many calls with varied shapes on one LocalCluster; resident memory, open file
descriptors and processes before and after (benchmarks/soak.py; a short run in the tests)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from haloconv.api import conv
from haloconv.engines import LocalCluster
from haloconv.kernels import single_node
from haloconv.plan import make_plan
from haloconv.spec import ConvSpec

PARTITIONS = ("rows", "cols", "grid", "batch", "channels")


def proc_status(pid: int | str, field: str) -> str:
    """The value of ``field`` in /proc/PID/status (KeyError when absent)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(field)


def proc_mb(pid: int | str, field: str = "VmRSS") -> float:
    """A memory field of /proc/PID/status in MB (VmRSS now, VmHWM the high-water mark)."""
    return float(proc_status(pid, field).split()[0]) / 1024


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return not proc_status(pid, "State").startswith("Z")
    except (OSError, KeyError):
        return False


def children(pid: int | None = None) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int(proc_status(d.name, "PPid")) == pid and _alive(int(d.name)):
                    kids.append(int(d.name))
            except (OSError, KeyError, ValueError):
                continue
    return kids


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


def snapshot(cluster: LocalCluster) -> dict:
    """Resident MB of the master and each worker, and their open file descriptors."""
    pids = ["self", *cluster.pids()]
    return {
        "rss_mb": {str(p): proc_mb(p) for p in pids},
        "fds": {str(p): len(os.listdir(f"/proc/{p}/fd")) for p in pids},
    }


def soak(calls: int = 200, workers: int = 2, distinct: int = 40, seed: int = 0, log=print) -> dict:
    """``calls`` exact convolutions over ``distinct`` varied problems (end to end, and resident
    layers: scatter, conv, gather, free).  Warm-up is one pass over the problems (the
    allocators reach the largest shapes); growth is measured over the calls after it, in a
    shuffled order."""
    g = torch.Generator().manual_seed(seed)

    def r(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    problems = []
    for i in range(distinct):
        n, c, h, w, k = r(1, 3), r(1, 8), r(16, 160), r(16, 160), 2 * r(0, 2) + 1
        problems.append((i, (n, c, h, w), (r(1, 8), c, k, k), PARTITIONS[i % len(PARTITIONS)], i % 4 == 3))
    order = list(range(distinct)) + torch.randint(0, distinct, (max(0, calls - distinct),), generator=g).tolist()
    with LocalCluster(workers) as cl:
        pids = cl.pids()
        before = None
        for step, j in enumerate(order):
            if step == distinct:
                before = snapshot(cl)
            i, xs, ws, part, resident = problems[j]
            x = torch.randn(xs, generator=torch.Generator().manual_seed(i))
            wt = torch.randn(ws, generator=torch.Generator().manual_seed(1000 + i))
            k = ws[-1]
            spec = ConvSpec.from_args(x.shape, wt.shape, None, padding=k // 2)
            if resident:
                plan = make_plan(spec, "rows", workers, ownership="even")
                sx = cl.scatter(x, plan)
                sy = cl.conv(sx, wt, plan=plan)
                y = cl.gather(sy)
                cl.free(sx, sy)
            else:
                y = conv(x, wt, padding=k // 2, partition=part, workers=workers, engine=cl)
            if not torch.equal(y, single_node(x, wt, None, spec)):
                raise AssertionError(f"call {step}: result differs from single-node torch")
        after = snapshot(cl)
        if before is None:
            before = after
    leaked = [p for p in pids if _alive(p)]
    growth = {p: after["rss_mb"][p] / before["rss_mb"][p] - 1 for p in before["rss_mb"]}
    fd_growth = {p: after["fds"][p] - before["fds"][p] for p in before["fds"]}
    out = {"calls": calls, "before": before, "after": after, "rss_growth": growth, "fd_growth": fd_growth,
           "leaked_processes": leaked}
    log(f"{calls} calls over {distinct} problems on {workers} workers; after the warm-up pass:")
    for p in growth:
        log(f"  {'master' if p == 'self' else 'worker ' + p:>14}: RSS {before['rss_mb'][p]:7.1f} -> "
            f"{after['rss_mb'][p]:7.1f} MB ({100 * growth[p]:+.1f}%), fds {before['fds'][p]} -> {after['fds'][p]}")
    log(f"  worker processes left after close: {leaked or 'none'}")
    return out
