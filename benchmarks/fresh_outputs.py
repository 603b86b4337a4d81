"""A default call with a fresh output against OpenCV's (issue 31), side by side in one run.

    .venv/bin/python benchmarks/fresh_outputs.py [--size 8192] [--repeat 5]

S x S float32, zero padding ('same'), OpenCV's BORDER_CONSTANT; kernels random k x k (3, 7,
15) and gaussian:2 (OpenCV: sepFilter2D with its two factors). Rows, best of N, interleaved,
each call in this process after a warm-up:
  cv2             cv2.filter2D / sepFilter2D, a fresh output (OpenCV's own allocation)
  cv2 dst=        the same into an output made (and touched) before
  cv2 default...  OpenCV's default border (BORDER_REFLECT_101), for reference: its
                  constant border is the slower of the two
  haloconv        haloconv.conv(x, w, padding='same'): every default, a fresh output on the
                  pages host.page_kind() picks from the kernel's free huge-page blocks
  haloconv <kind> the same with the other page kind forced
  haloconv out=   into an output made (and touched) before
  copy            np.copyto of the image into a touched buffer: the memory's limit
Ratios are cv2's time over each row's (>= 1: at least as fast as OpenCV). Load average
beside every row. Not a test.
"""

import argparse
import os
import time

import cv2
import numpy as np

import haloconv
from haloconv.engines import host
from haloconv.files import named_kernels

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=8192)
ap.add_argument("--repeat", type=int, default=5)
args = ap.parse_args()
x = np.random.default_rng(0).random((args.size, args.size)).astype(np.float32)
x4 = x[None, None]
probed = host.page_kind(x.nbytes)
other = "ordinary" if probed == "huge" else "huge"


def with_pages(kind, fn):
    def run():
        os.environ["HALOCONV_PAGES"] = kind
        try:
            return fn()
        finally:
            del os.environ["HALOCONV_PAGES"]
    return run


print(f"{args.size}^2 float32, best of {args.repeat}; pages for a fresh result: {probed} "
      f"({(host.free_huge_bytes() or 0) / 2**30:.1f} GiB free in huge-page blocks); cv2 threads {cv2.getNumThreads()}")
print("| kernel | method | seconds | cv2 / this | load |")
print("|---|---|---|---|---|")
copy_dst = np.empty_like(x)
copy_dst.fill(0)


def methods_for(name: str) -> dict:
    """The rows for one kernel: each a call with no arguments."""
    dst = np.empty_like(x)
    dst.fill(0)
    out = np.empty_like(x4)
    out.fill(0)
    if name.isdigit():
        k = int(name)
        w = np.random.default_rng(k).random((1, 1, k, k)).astype(np.float32)

        def ocv(**kw):
            return cv2.filter2D(x, -1, w[0, 0], **kw)
    else:
        w = named_kernels.load_kernel(name, 1, 2)[0].astype(np.float32)
        u, sv, vt = np.linalg.svd(w[0, 0].astype(np.float64))
        col, row = (u[:, 0] * np.sqrt(sv[0])).astype(np.float32), (vt[0] * np.sqrt(sv[0])).astype(np.float32)

        def ocv(**kw):
            return cv2.sepFilter2D(x, -1, row, col, **kw)

    def hc(**kw):
        return haloconv.conv(x4, w, padding="same", **kw)

    return {
        "cv2": lambda: ocv(borderType=cv2.BORDER_CONSTANT),
        "cv2 dst=": lambda: ocv(dst=dst, borderType=cv2.BORDER_CONSTANT),
        "cv2 default border (reflect 101)": ocv,
        "haloconv": hc,
        f"haloconv {other} pages": with_pages(other, hc),
        "haloconv out=": lambda: hc(out=out),
        "copy": lambda: np.copyto(copy_dst, x),
    }


for name in ("3", "7", "15", "gaussian:2"):
    methods = methods_for(name)
    best = {}
    for fn in methods.values():
        fn()
    for _ in range(args.repeat):
        for m, fn in methods.items():
            t0 = time.perf_counter()
            r = fn()
            best[m] = min(best.get(m, np.inf), time.perf_counter() - t0)
            del r
    for m in methods:
        print(f"| {name} | {m} | {best[m]:.4f} | {best['cv2'] / best[m]:.2f} | {os.getloadavg()[0]:.2f} |", flush=True)
