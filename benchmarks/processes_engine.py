"""Processes engine vs single-process torch, side by side in one run (issue target).

    .venv/bin/python benchmarks/processes_engine.py [--size 1024] [--channels 64] [--repeat 5]

1 x C x S x S float32, C -> C, 3x3, padding 1, rows partition.  Single-process torch with 2
threads vs the processes engine with 2 workers x 1 thread:
  end to end: haloconv.conv(x, ..., engine=cluster): master scatters, workers exchange
              halos and compute, master gathers the full result;
  sharded:    cluster.conv on shards already resident in the workers (halo + compute).
Best of N after a warm-up, interleaved, load average beside every figure.  Not a test.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

import haloconv


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads of the single-process baseline")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--exchange", default="master", choices=("neighbours", "master"),
                    help="end to end: master sends whole windows (default) or neighbours swap halos")
    ap.add_argument("--pipeline", type=int, default=1,
                    help="exchange=master: each worker's window travels and computes in this many parts")
    ap.add_argument("--weights", default=None, help="relative worker speeds, e.g. 1.2,1 (the master starts first)")
    args = ap.parse_args()
    c, n = args.channels, args.size
    torch.manual_seed(0)
    x = torch.randn(1, c, n, n)
    w = torch.randn(c, c, 3, 3)
    b = torch.randn(c)
    torch.set_num_threads(args.threads)
    weights = None if args.weights is None else [float(v) for v in args.weights.split(",")]
    plan = haloconv.plan(x.shape, w.shape, b.shape, padding=1, partition="rows", workers=args.workers,
                         worker_weights=weights, exchange=args.exchange, pipeline=args.pipeline)
    # resident shards: layers chain with ownership='even' (the sharded call uses halos between neighbours)
    layer = haloconv.plan(x.shape, w.shape, b.shape, padding=1, partition="rows", workers=args.workers,
                          ownership="even")
    print(f"x={list(x.shape)} w={list(w.shape)} rows over {args.workers} workers x 1 thread "
          f"vs single process x {args.threads} threads; end to end: exchange={args.exchange} "
          f"pipeline={args.pipeline} weights={weights}")
    with haloconv.LocalCluster(workers=args.workers, threads_per_worker=1) as cluster:
        shards = cluster.scatter(x, layer)

        def single():
            return F.conv2d(x, w, b, padding=1)

        def end_to_end():
            return haloconv.execute(plan, x, w, b, engine=cluster)

        def sharded():
            y = cluster.conv(shards, w, b, plan=layer)
            cluster.free(y)

        ref = single()
        ex = end_to_end()
        sharded()
        exact = torch.equal(ex.output, ref) and torch.equal(cluster.gather(cluster.conv(shards, w, b, plan=layer)), ref)
        times = {"single": [], "end_to_end": [], "sharded": []}
        loads = []
        for _ in range(args.repeat):  # interleaved: load changes hit all three alike
            times["single"].append(timed(single))
            times["end_to_end"].append(timed(end_to_end))
            times["sharded"].append(timed(sharded))
            loads.append(os.getloadavg()[0])
        best = {k: min(v) for k, v in times.items()}
        print(f"exact (torch.equal to single-process): {exact}")
        print(f"{'':>12} {'best s':>8} {'ratio':>6}  load avg (1 min) during the runs")
        for k in ("single", "end_to_end", "sharded"):
            print(f"{k:>12} {best[k]:8.4f} {best[k] / best['single']:6.2f}  "
                  f"{' '.join(f'{v:.2f}' for v in loads)}")
        print("targets on a 2-core machine: sharded <= 1.05x, end to end <= 1.25x")
        print("last end-to-end run, per worker:\n" + ex.table())


if __name__ == "__main__":
    main()
