"""What one small call costs: haloconv.conv on a float32 image with a 3x3 filter, against
cv2.filter2D on the same image, side by side in one process (issue 28: <= 3x at 512^2,
<= 1.2x at 2048^2).

    .venv/bin/python benchmarks/small_calls.py [--sizes 512,2048] [--calls 30]

Prints, per size, the median of ``--calls`` calls of each (after one call each to warm up:
the first haloconv call plans, the next ones take the plan the cost model chose), their
ratio, the time of planning alone, and the load average (other sessions share this
machine's cores).  Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import cv2
import numpy as np

import haloconv


def median_s(fn, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="512,2048")
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    cv2.setNumThreads(haloconv.default_workers())
    w = np.random.default_rng(1).random((3, 3), dtype=np.float32)
    print(f"{'size':>6} {'haloconv ms':>12} {'cv2 ms':>8} {'ratio':>6} {'plan ms':>8}  load")
    for n in (int(s) for s in args.sizes.split(",")):
        x = np.random.default_rng(0).random((n, n), dtype=np.float32)
        ours = median_s(lambda x=x: haloconv.conv(x, w, padding=1), args.calls)
        theirs = median_s(lambda x=x: cv2.filter2D(x, -1, w, borderType=cv2.BORDER_CONSTANT), args.calls)
        planning = median_s(lambda n=n: haloconv.plan((1, 1, n, n), w[None, None], padding=1, engine="threads"),
                            args.calls)
        print(f"{n:>6} {ours * 1e3:>12.3f} {theirs * 1e3:>8.3f} {ours / theirs:>6.2f} {planning * 1e3:>8.3f}  "
              f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
