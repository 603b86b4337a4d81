"""Threads engine vs single-node torch, side by side in one run.

    .venv/bin/python benchmarks/threads_engine.py [--size 2048] [--channels 16] [--repeat 5]

Prints, per partition, the best-of-N wall time of haloconv.conv (threads engine) and of the
single-node torch call with the same total threads, their ratio, and the load average
beside every figure (other sessions share this machine's cores). Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import haloconv
from haloconv.compute import kernels


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--workers", type=int, default=haloconv.default_workers())
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    c, k, n = args.channels, args.kernel, args.size
    x = torch.randn(1, c, n, n)
    w = torch.randn(c, c, k, k)
    b = torch.randn(c)
    print(f"x={list(x.shape)} w={list(w.shape)} workers={args.workers} torch threads={torch.get_num_threads()}")
    print(f"{'partition':>10} {'single s':>9} {'haloconv s':>10} {'ratio':>6} {'exact':>5}  load avg")
    for part in ("rows", "cols", "grid", "channels"):
        plan = haloconv.plan(x.shape, w.shape, b.shape, padding=k // 2, partition=part, workers=args.workers)

        def single(plan=plan):
            return kernels.single_node(x, w, b, plan.spec)

        def split(plan=plan):
            return haloconv.execute(plan, x, w, b).output

        single(), split()  # warm-up
        ts, th = [], []
        for _ in range(args.repeat):  # interleaved, so load changes hit both alike
            ts.append(best_of(single, 1))
            th.append(best_of(split, 1))
        exact = torch.equal(single(), split())
        load = os.getloadavg()
        print(f"{part:>10} {min(ts):9.4f} {min(th):10.4f} {min(th) / min(ts):6.2f} {str(exact):>5}  "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
