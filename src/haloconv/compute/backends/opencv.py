"""Backend 'opencv': OpenCV's ``filter2D`` per channel, for 2-D single-channel and
depthwise filters (C_in = C_out = groups, or one channel) in float32/float64.

OpenCV computes the interior of a row with SIMD multiply-adds and the last few columns of
each call with scalar code that rounds differently, so where a column falls in a call
decides its last bits.  To make an output's value independent of the tile it falls in,
every output is computed in the SIMD body of its call: each call recomputes its last
TAIL columns from a small copy followed by zero columns (``correlate2d``).  A split run
is then bitwise equal to the same procedure on the whole image (``single_node``) while
OpenCV filters directly, which it does below DIRECT_TAPS kernel taps; at and above that
it may switch to its DFT path, whose results depend on the tile's size: within
``tolerance`` of torch there."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from haloconv.compute.backends.base import Backend, dilated, effective_kernel, is_filter
from haloconv.planning.spec import ConvSpec

# OpenCV's filter2D filters directly below 50 taps in every depth (it may use its DFT from
# 50 taps in float64, 130 in float32: filter.dispatch.cpp, dftFilter2D)
DIRECT_TAPS = 50
# columns past the last kept output in every call: more than the widest SIMD vector
# (16 floats with AVX-512) so the kept outputs are never in a call's scalar tail
TAIL = 32


def correlate2d(plane: np.ndarray, kernel: np.ndarray, pads: Sequence[int], out: np.ndarray) -> None:
    """``out`` = the valid 2-D cross-correlation of ``plane`` zero-padded by ``pads`` (top,
    bottom, left, right) with ``kernel``, by filter2D, every output from the SIMD body of a
    call (see the module docstring)."""
    (kh, kw), (top, bottom, left, right), (rows, cols) = kernel.shape, pads, plane.shape
    h, w = out.shape
    if h <= 0 or w <= 0:
        return
    redo = min(w, TAIL + kw)  # the last outputs of each row, computed again
    first = w - redo - left  # the plane's column those start reading at
    m = h - kh + 1 + top  # outputs that read no row past the first h
    if first < 0 or top + bottom > kh - 1 or left + right > kw - 1 or (rows > h and m <= 0):
        # narrow, short, or padded wider than the kernel's reach: one call on a zero-padded copy
        buf = np.zeros((rows + top + bottom, cols + left + right + TAIL), plane.dtype)
        buf[top:top + rows, left:left + cols] = plane
        out[...] = cv2.filter2D(buf, -1, kernel, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)[:h, :w]
        return
    # anchored at the top and left padding, OpenCV's zero border is the padding: output
    # (i, j) of the padded valid correlation is its output (i, j).  The call sees the first
    # h x w of the plane (its output is the shape of its input, so it can be ``out``): outputs
    # that read past those are computed again below (the last rows, the last columns)
    main = plane[:h, :w]
    if out.flags.c_contiguous:
        cv2.filter2D(main, -1, kernel, dst=out, anchor=(left, top), borderType=cv2.BORDER_CONSTANT)
    else:
        out[...] = cv2.filter2D(main, -1, kernel, anchor=(left, top), borderType=cv2.BORDER_CONSTANT)
    if rows > h:  # the last rows read rows past h: again, from the rows they read
        correlate2d(plane[m - top:], kernel, (0, bottom, left, right), out[m:])
    # the last outputs of each row again, from a copy with TAIL zero columns after them
    strip = np.zeros((rows, redo + kw - 1 + TAIL), plane.dtype)
    strip[:, :cols - first] = plane[:, first:]
    out[:, w - redo:] = cv2.filter2D(strip, -1, kernel, anchor=(0, top), borderType=cv2.BORDER_CONSTANT)[:h, :redo]


class OpenCV(Backend):
    name = "opencv"
    exact = True
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12}
    guarantee = (f"bitwise equal to OpenCV filter2D on the whole image (kernels under {DIRECT_TAPS} taps; "
                 "larger: within 1e-5 (float32) / 1e-12 (float64) x max|y| of torch)")
    default_rates = {"opencv.taps": 2.8e-11, "opencv.pixels": 6.7e-10}  # per output x tap; per output

    def unsupported(self, spec: ConvSpec) -> str | None:
        if spec.ndim != 2:
            return f"backend='opencv' filters 2-D images only, got {spec.ndim}-D"
        if not is_filter(spec):
            return ("backend='opencv' computes single-channel filters only (C_in = C_out = groups, or one channel), "
                    f"got C_in={spec.in_channels} C_out={spec.out_channels} groups={spec.groups}")
        return None

    def exact_for(self, spec: ConvSpec) -> bool:
        return math.prod(effective_kernel(spec)) < DIRECT_TAPS

    def correlate(self, window: torch.Tensor, weight: torch.Tensor, spec: ConvSpec, groups: int) -> torch.Tensor:
        computed = [n + 2 * p - k + 1 for n, p, k in zip(window.shape[2:], spec.backend_pad, effective_kernel(spec))]
        out = np.empty((*window.shape[:2], *computed), _numpy_dtype(window))
        _fill(window, weight, spec, (0, 0), out)
        return torch.from_numpy(out).to(window.device)

    def compute(self, window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec,
                groups: int, torch_backend: object, first: Sequence[int], out_shape: Sequence[int],
                out: torch.Tensor | None = None) -> torch.Tensor:
        """At stride 1, only the kept outputs are computed, straight into ``out`` if given."""
        if any(s != 1 for s in spec.stride) or (out is not None and out.device.type != "cpu"):
            return super().compute(window, weight, bias, spec, groups, torch_backend, first, out_shape, out)
        dest = out if out is not None else window.new_empty((*window.shape[:2], *out_shape))
        _fill(window, weight, spec, first, dest.numpy())
        if bias is not None:
            dest += bias.view(1, -1, *([1] * spec.ndim))
        return dest

    def work(self, spec: ConvSpec, window: Sequence[int], out: Sequence[int], groups: int) -> dict[str, float]:
        pixels = out[0] * out[1] * math.prod(w + 2 * p for w, p in zip(window[2:], spec.backend_pad))
        return {"opencv.taps": pixels * math.prod(effective_kernel(spec)), "opencv.pixels": pixels}

    def calibration(self, side: int) -> list[ConvSpec]:
        return [ConvSpec.from_args((1, 1, 8 * side, 8 * side), (1, 1, k, k), None, padding=k // 2) for k in (3, 7)]

    def concurrency_probe(self) -> tuple[tuple, tuple]:
        return (1, 1, 1024, 2048), (1, 1, 5, 5)


def _numpy_dtype(t: torch.Tensor) -> np.dtype:
    return np.dtype(np.float32) if t.dtype == torch.float32 else np.dtype(np.float64)


def _fill(window: torch.Tensor, weight: torch.Tensor, spec: ConvSpec, first: Sequence[int], out: np.ndarray) -> None:
    """Every channel of the window correlated with its own filter: the outputs ``first``
    on of the window's padded valid correlation (spec.backend_pad), as many as ``out`` holds."""
    # OpenCV's thread count is one setting per process: it follows torch's for this tile,
    # which the engines set to their share of the cores (every tile sets the same)
    cv2.setNumThreads(torch.get_num_threads())
    xs = window.detach().cpu().numpy()
    ks = dilated(weight, spec.dilation).detach().cpu().numpy()
    # the part of the window the kept outputs read, and the zeros beyond it, per axis
    cut, pads = [], []
    for f, n, k, p, size in zip(first, out.shape[2:], ks.shape[2:], spec.backend_pad, xs.shape[2:]):
        lo, hi = f - p, f + n + k - 1 - p  # window indices read by outputs [f, f + n)
        cut.append(slice(max(lo, 0), min(hi, size)))
        pads.append((max(-lo, 0), max(hi - size, 0)))
    (top, bottom), (left, right) = pads
    for n in range(xs.shape[0]):
        for c in range(xs.shape[1]):
            correlate2d(xs[n, c][tuple(cut)], ks[c, 0], (top, bottom, left, right), out[n, c])


BACKEND = OpenCV()
