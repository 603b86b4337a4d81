"""The whole command a user types, against the OpenCV script a user would write instead.

    .venv/bin/python benchmarks/whole_command.py [--side 4096] [--kernel gaussian:2] [--repeat 7]

An S x S float32 .npy; then, interleaved, each a fresh process watched from outside by
psutil every 5 ms:
  haloconv   haloconv run IN --kernel K -o OUT   (every default: the cost model's backend and
             partition, a filter in this process, no torch imported)
  opencv     python: np.load, cv2.sepFilter2D with the kernel's 1-D factors (zero border),
             np.save — the three lines a user would write (cv2.filter2D for a kernel that is
             not rank 1)
Wall time (median and best of --repeat) and peak resident memory of each, their ratios, the
load average; the largest difference between the two outputs.  Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from memory_watch import run_watched  # benchmarks/memory_watch.py, beside this script

ap = argparse.ArgumentParser()
ap.add_argument("--side", type=int, default=4096)
ap.add_argument("--kernel", default="gaussian:2")
ap.add_argument("--repeat", type=int, default=7)
args = ap.parse_args()

OPENCV = """
import sys, numpy as np, cv2
x = np.load(sys.argv[1])
w = np.load(sys.argv[3])
u, s, vt = np.linalg.svd(w.astype(np.float64))
if s[1:].max(initial=0) <= 1e-6 * s[0]:  # rank 1: two 1-D passes
    ky, kx = (u[:, 0] * np.sqrt(s[0])).astype(np.float32), (vt[0] * np.sqrt(s[0])).astype(np.float32)
    y = cv2.sepFilter2D(x, -1, kx, ky, borderType=cv2.BORDER_CONSTANT)
else:
    y = cv2.filter2D(x, -1, w, borderType=cv2.BORDER_CONSTANT)
np.save(sys.argv[2], y)
"""


def watched(cmd: list[str], cwd: Path) -> tuple[float, int]:
    wall, seen, _ = run_watched(cmd, cwd)
    return wall, max(seen.values())


with tempfile.TemporaryDirectory(prefix="haloconv-whole-") as d:
    work = Path(d)
    from haloconv.files import named_kernels

    np.save(work / "in.npy", np.random.default_rng(0).random((args.side, args.side), dtype=np.float32))
    np.save(work / "w.npy", named_kernels.load_kernel(args.kernel, 1, 2)[0][0, 0].astype(np.float32))
    cmds = {
        "haloconv": [sys.executable, "-m", "haloconv", "run", "in.npy", "--kernel", args.kernel, "-o", "hc",
                     "--overwrite"],
        "opencv": [sys.executable, "-c", OPENCV, "in.npy", "cv.npy", "w.npy"],
    }
    runs: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
    for _ in range(args.repeat):
        for name, cmd in cmds.items():
            runs[name].append(watched(cmd, work))
    load = os.getloadavg()[0]
    print(f"{args.side}x{args.side} float32 .npy, kernel {args.kernel}; {args.repeat} runs each, interleaved; "
          f"load {load:.2f}")
    print(f"{'command':<10} {'median s':>9} {'best s':>7} {'peak RSS MiB':>13}")
    stat = {}
    for name, rs in runs.items():
        walls, rss = [w for w, _ in rs], max(r for _, r in rs)
        stat[name] = (statistics.median(walls), min(walls), rss)
        print(f"{name:<10} {stat[name][0]:>9.3f} {stat[name][1]:>7.3f} {rss / 2**20:>13.0f}")
    h, c = stat["haloconv"], stat["opencv"]
    print(f"haloconv / opencv: wall {h[0] / c[0]:.2f}x (median), {h[1] / c[1]:.2f}x (best); "
          f"peak memory {h[2] / c[2]:.2f}x")
    diff = np.abs(np.load(work / "hc.npy").reshape(args.side, args.side) - np.load(work / "cv.npy")).max()
    print(f"max |haloconv - opencv| = {diff:.3g} (the script's 1-D factors come from an SVD, haloconv's from "
          "a column and a row of the kernel)")
    # haloconv's output is OpenCV's own call on the whole image with haloconv's factors, bit for bit
    import cv2

    from haloconv.compute.backends.separable import factors

    w = np.load(work / "w.npy")
    pair = factors(w)
    x = np.load(work / "in.npy")
    own = (cv2.filter2D(x, -1, w, borderType=cv2.BORDER_CONSTANT) if pair is None
           else cv2.sepFilter2D(x, -1, pair[0], pair[1], borderType=cv2.BORDER_CONSTANT))
    same = np.array_equal(np.load(work / "hc.npy").reshape(args.side, args.side), own)
    print(f"haloconv == OpenCV's own call with haloconv's factors, bit for bit: {same}")
