"""Unequal workers: dynamic scheduling against an even static split (issue target).

    .venv/bin/python benchmarks/unequal_workers.py [--size 1536] [--channels 32] [--tiles 16] [--repeat 3]

1 x C x S x S float32, C -> C, 3x3, rows; a LocalCluster of 2 (the master and one worker
process, one thread each); the worker is made 2x slower (it sleeps as long as it computed,
after each compute: LocalCluster's throttle).
  ideal     the time of one process computing the same --tiles tiles, divided by the summed
            speeds (1 + 1/2); "one process, whole" (one big tile) is printed beside it
  static    an even split: one half per process (the fast one waits for the slow one)
  weighted  a static split by the speeds the processes measured first (LocalCluster.speeds,
            what `haloconv run --worker-speeds auto` does; the measuring is timed apart)
  dynamic   --tiles row bands handed out to whichever process is free
Best of N, interleaved, load average printed.  Target: dynamic within 15% of ideal; static
about 1.5x.  Every result checked against single-node torch.  Not a test.
"""

import argparse
import os
import time

import torch

from haloconv.engines import LocalCluster
from haloconv.tiling.plan import make_plan
from haloconv.tiling.spec import ConvSpec

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=1536)
ap.add_argument("--channels", type=int, default=32)
ap.add_argument("--tiles", type=int, default=16)
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--slowdown", type=float, default=2.0)
args = ap.parse_args()
c, n = args.channels, args.size
g = torch.Generator().manual_seed(0)
x, w, b = torch.randn(1, c, n, n, generator=g), torch.randn(c, c, 3, 3, generator=g), torch.randn(c, generator=g)
spec = ConvSpec.from_args(x.shape, w.shape, b.shape, padding=1)
ref = torch.nn.functional.conv2d(x, w, b, padding=1)
with LocalCluster(2, throttle={1: args.slowdown}) as cl, LocalCluster(1) as solo:
    t0 = time.perf_counter()
    speeds = cl.speeds(spec)
    t_speeds = time.perf_counter() - t0
    runs = {
        "one process, whole": lambda: cl.run(make_plan(spec, "rows", 1), x, w, b),
        "one process": lambda: solo.run_dynamic(make_plan(spec, "rows", args.tiles), x, w, b),
        "static": lambda: cl.run(make_plan(spec, "rows", 2), x, w, b),
        "weighted": lambda: cl.run(make_plan(spec, "rows", 2, worker_weights=speeds), x, w, b),
        "dynamic": lambda: cl.run_dynamic(make_plan(spec, "rows", args.tiles), x, w, b),
    }
    best = {k: float("inf") for k in runs}
    tiles = {}
    for k in runs:
        runs[k]()  # warm-up
    for _ in range(args.repeat):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            ex = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
            assert torch.equal(ex.output, ref), k
            tiles[k] = getattr(ex, "tiles_done", None)
ideal = best["one process"] / (1 + 1 / args.slowdown)
print(f"1x{c}x{n}x{n}, 3x3, 2 processes, worker 1 slowed {args.slowdown}x; load average {os.getloadavg()}")
print(f"one process, {args.tiles} tiles {best['one process']:.3f} s (whole, one tile: "
      f"{best['one process, whole']:.3f} s) -> ideal {ideal:.3f} s")
print(f"measured speeds {[round(v, 2) for v in speeds]} in {t_speeds:.2f}s")
for k in ("static", "weighted", "dynamic"):
    print(f"{k:8s} {best[k]:.3f} s = {best[k] / ideal:.2f}x ideal  (tiles per rank: {tiles[k]})")
print(f"target: dynamic within 15% of ideal: {'met' if best['dynamic'] <= 1.15 * ideal else 'NOT met'}; "
      f"load {os.getloadavg()[0]:.2f}")
