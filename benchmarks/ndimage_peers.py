"""haloconv.ndimage against scipy.ndimage, OpenCV and dask-image, side by side in one run
(issue 29's benchmark).

    .venv/bin/python benchmarks/ndimage_peers.py [--size 8192] [--repeat 3]

S x S images of uint8, uint16 and float32; two filters, mode 'reflect' (OpenCV's
BORDER_REFLECT) everywhere:
  gaussian   gaussian_filter(img, 2) (scipy's 17-tap kernel); OpenCV: cv2.sepFilter2D with
             the same 1-D kernel (and the output dtype of the input)
  correlate  correlate(img, k) with a random dense 7 x 7 k; OpenCV: cv2.filter2D
Methods, each best of N calls, interleaved, in this process (warm: the first call of each is
not timed), with a fresh output per call:
  haloconv-ndimage  haloconv.ndimage, backend 'ndimage' (the default: bit for bit scipy), 2 workers
  haloconv-auto     haloconv.ndimage, backend 'auto': OpenCV's own call in the image's dtype, split by
                    rows on 2 threads (ndimage/native.py), 2 workers
  scipy             scipy.ndimage, one thread
  opencv            cv2 on 2 threads (set before each call)
  dask-image        dask_image.ndfilters on row chunks (S/2 x S), threaded scheduler, 2 threads
Each result's largest difference from scipy's is printed beside its time. Load average beside
every row. Not a test.
"""

import argparse
import os
import time

import cv2
import dask
import dask.array as da
import dask_image.ndfilters as dndf
import numpy as np
import scipy.ndimage as sndi

from haloconv import ndimage as hndi
from haloconv.ndimage.filters import _gaussian_kernel1d

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=8192)
ap.add_argument("--repeat", type=int, default=3)
args = ap.parse_args()
cv2.setNumThreads(2)
dask.config.set(scheduler="threads", num_workers=2)
rng = np.random.default_rng(0)
g1 = _gaussian_kernel1d(2.0, 0, 8)
k7 = rng.random((7, 7))
k7 /= k7.sum()


def methods(img, which):
    d = da.from_array(img, chunks=(img.shape[0] // 2, img.shape[1]))
    if which == "gaussian":
        return {
            "haloconv-ndimage": lambda: hndi.gaussian_filter(img, 2, workers=2),
            "haloconv-auto": lambda: hndi.gaussian_filter(img, 2, workers=2, backend="auto"),
            "scipy": lambda: sndi.gaussian_filter(img, 2),
            "opencv": lambda: (cv2.setNumThreads(2), cv2.sepFilter2D(img, -1, g1, g1,
                                                                     borderType=cv2.BORDER_REFLECT))[1],
            "dask-image": lambda: dndf.gaussian_filter(d, 2).compute(),
        }
    return {
        "haloconv-ndimage": lambda: hndi.correlate(img, k7, workers=2),
        "haloconv-auto": lambda: hndi.correlate(img, k7, workers=2, backend="auto"),
        "scipy": lambda: sndi.correlate(img, k7),
        "opencv": lambda: (cv2.setNumThreads(2), cv2.filter2D(img, -1, k7, borderType=cv2.BORDER_REFLECT))[1],
        "dask-image": lambda: dndf.correlate(d, k7).compute(),
    }


print(f"{args.size}^2, best of {args.repeat}, mode reflect; cores {os.cpu_count()}")
print("| dtype | filter | method | seconds | x scipy | x opencv | max diff from scipy | load |")
print("|---|---|---|---|---|---|---|---|")
for dtype in (np.uint8, np.uint16, np.float32):
    img = (rng.random((args.size, args.size)) * (200 if dtype != np.float32 else 1)).astype(dtype)
    for which in ("gaussian", "correlate"):
        ms = methods(img, which)
        ref = ms["scipy"]().astype(np.float64)
        best = {}
        outs = {}
        for name, fn in ms.items():
            outs[name] = fn()  # warm
        for _ in range(args.repeat):
            for name, fn in ms.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best.get(name, np.inf), time.perf_counter() - t0)
        for name in ms:
            diff = np.abs(outs[name].astype(np.float64) - ref).max()
            print(f"| {np.dtype(dtype).name} | {which} | {name} | {best[name]:.3f} | {best['scipy'] / best[name]:.2f} "
                  f"| {best['opencv'] / best[name]:.2f} | {diff:.3g} | {os.getloadavg()[0]:.2f} |", flush=True)
