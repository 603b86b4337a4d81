"""Soak: 200 calls with varied shapes on one LocalCluster (issue target: resident memory
growth < 5% after warm-up, no leaked file descriptors or processes).

    .venv/bin/python benchmarks/soak.py [--calls 200] [--workers 2] [--distinct 40]

Every result is checked against single-node torch.  Not a test (tests/test_soak.py runs a
short version).
"""

from __future__ import annotations

import argparse
import os

import torch

from haloconv import LocalCluster, conv
from haloconv.compute.kernels import single_node
from haloconv.engines.host import alive, proc_mb
from haloconv.tiling.plan import make_plan
from haloconv.tiling.spec import ConvSpec

PARTITIONS = ("rows", "cols", "grid", "batch", "channels")


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
    leaked = [p for p in pids if alive(p)]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--distinct", type=int, default=40)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}")
    r = soak(args.calls, args.workers, args.distinct)
    ok = max(r["rss_growth"].values()) < 0.05 and not any(r["fd_growth"].values()) and not r["leaked_processes"]
    print(f"target (RSS growth < 5%, no fd or process leaked): {'met' if ok else 'NOT met'}; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
