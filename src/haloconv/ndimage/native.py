"""haloconv.ndimage's OpenCV path for images in their own dtype: a 2-D correlation that
OpenCV can compute as it is asked — planes of uint8, uint16, int16, float32 or float64, a
mode that is one of OpenCV's border types, the kernel at its centre, an output of the
image's dtype — is computed by OpenCV's own call (``cv2.sepFilter2D`` for a rank-1 kernel,
``cv2.filter2D`` below its DFT's reach) in the image's dtype, with the mode as the border:
no converted copy of the image, no window copied, no result converted.

The image is cut in row bands computed at once on threads, every band a call on the band's
own rows (a view) straight into the output's rows.  OpenCV filters a row with the same
arithmetic whichever rows lie around it, and a band spans the image's columns, so each
output is the whole image's call's wherever its kernel reads only the band's rows or the
image's border; the rows near a band's inner edges, whose kernels read the band's border
instead of its neighbours' rows, are computed again from a strip of the image around them.
So a split call is bit for bit ``cv2.sepFilter2D`` / ``cv2.filter2D`` on the whole image
with the border type of the mode.

What that is: for floats, OpenCV's float sums (within float rounding of scipy's float64
sums); for 8-bit images, OpenCV's fixed-point sums of a rank-1 kernel and float sums of a
dense one, rounded to the nearest integer and saturated, where scipy truncates its float64
sums (so up to a unit or two apart, and nearer the exact value)."""

from __future__ import annotations

import numpy as np

# scipy's modes (as haloconv names them, ndimage.arguments.haloconv_mode) that are OpenCV border types
BORDERS = {"symmetric": "BORDER_REFLECT", "reflect": "BORDER_REFLECT_101", "replicate": "BORDER_REPLICATE",
           0.0: "BORDER_CONSTANT"}
DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
DIRECT_TAPS = 50  # filter2D filters directly below this many taps (compute/backends/opencv.py)


def applies(x: np.ndarray, weights: np.ndarray, origins, padding_mode, output_dtype, opts: dict) -> bool:
    """Whether a correlation of the planes ``x`` (N, 1, H, W) with ``weights`` (1, 1, kh, kw)
    is one this path computes: see the module docstring; split by rows ('auto' or 'rows') on
    threads."""
    if x.ndim != 4 or weights.ndim != 4:
        return False
    kh, kw = weights.shape[2:]
    mode_ok = (padding_mode in BORDERS) if not isinstance(padding_mode, float) else padding_mode == 0.0
    partition = opts["partition"]
    return (x.dtype in DTYPES and np.dtype(output_dtype) == x.dtype
            and mode_ok and not any(origins) and isinstance(opts["engine"], str) and opts["engine"] == "threads"
            and isinstance(partition, str) and partition in ("auto", "rows")
            and kh // 2 < x.shape[2] and kw // 2 < x.shape[3] and bool(np.isfinite(weights).all())
            and (kh * kw < DIRECT_TAPS or _factors(weights[0, 0], x.dtype) is not None))


def correlate(x: np.ndarray, weights: np.ndarray, padding_mode, out: np.ndarray, workers: int | None) -> np.ndarray:
    """``out`` (x's shape and dtype) = every plane of ``x`` correlated with the 2-D kernel
    ``weights[0, 0]`` as OpenCV's call on it, split in row bands over ``workers`` threads."""
    import cv2

    from haloconv.engines.host import default_workers
    from haloconv.engines.inprocess.arrays import opencv_threads_kept
    from haloconv.engines.inprocess.helpers import run_each
    from haloconv.tiling.geometry import split_extent

    kernel = weights[0, 0].astype(np.float64 if x.dtype == np.float64 else np.float32)
    pair = _factors(weights[0, 0], x.dtype)
    border = getattr(cv2, BORDERS[padding_mode if not isinstance(padding_mode, float) else 0.0])
    if pair is None:
        def filt(src, dst):
            return cv2.filter2D(src, -1, kernel, dst=dst, borderType=border)
    else:
        kx, ky = pair

        def filt(src, dst):
            return cv2.sepFilter2D(src, -1, kx, ky, dst=dst, borderType=border)

    kh = kernel.shape[0]
    up, down = kh // 2, kh - 1 - kh // 2  # rows an output reads above and below its own
    n, _, rows, _ = x.shape
    workers = workers or default_workers()
    # a band per worker (more bands compute more edge strips again, and were slower); a band's
    # own rows outnumber its edges' reach
    bands = max(1, min(workers, rows // max(4 * kh, 1)))
    items = [(i, r0, r1) for i in range(n) for r0, r1 in split_extent(rows, bands)]

    def band(item) -> None:
        i, r0, r1 = item
        plane, dest = x[i, 0], out[i, 0]
        filt(plane[r0:r1], dest[r0:r1])
        # the rows whose kernels read past the band's inner edges, from a strip around them
        for lo, hi in ((r0, min(r0 + up, r1)) if r0 > 0 else (r0, r0),
                       (max(r1 - down, r0), r1) if r1 < rows else (r1, r1)):
            if hi > lo:
                s0, s1 = max(lo - up, 0), min(hi + down, rows)
                dest[lo:hi] = filt(plane[s0:s1], None)[lo - s0:hi - s0]

    with opencv_threads_kept():
        cv2.setNumThreads(1 if bands > 1 else workers)
        run_each(band, items, workers)
    return out


def rank1(weights: np.ndarray, dtype) -> bool:
    """Whether the kernel ``weights[0, 0]`` is rank 1 (sepFilter2D computes it)."""
    return _factors(weights[0, 0], dtype) is not None


def _factors(kernel: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray] | None:
    """(kx, ky) of a rank-1 kernel in the dtype OpenCV takes for ``dtype``'s images (as the
    'separable' backend factors it), or None."""
    from haloconv.compute.backends.separable import factors

    return factors(kernel.astype(np.float64 if np.dtype(dtype) == np.float64 else np.float32))
