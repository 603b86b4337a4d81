"""Backend 'opencv': OpenCV's ``filter2D`` per channel, for 2-D single-channel and
depthwise filters (C_in = C_out = groups, or one channel) in float32/float64.

OpenCV computes the interior of a row with SIMD multiply-adds and the last few columns of
each call with narrower or scalar code that rounds differently, and it picks its arithmetic
by the kernel and its anchor (a symmetric kernel anchored at its centre is summed in
pairs).  So that an output's value does not depend on the tile it falls in, every call
anchors the kernel at its centre (OpenCV's default), and every output is computed the way
the call on the whole image computes it (``correlate2d``):

- an output more than TAIL columns before the image's last comes from the SIMD body of a
  call: a call's last columns, and the rows and columns whose reads the call would take
  from its zero border instead of the tile's halo, are computed again from small copies
  padded explicitly, with TAIL zero columns after them;
- an output in the image's last TAIL columns, where the image is zero-padded to the
  kernel's reach (so the whole image's call reads OpenCV's own zero border there), comes
  from a call that ends where the image's does and starts a multiple of ALIGN columns from
  where the image's does: its columns fall in the same SIMD, narrower and scalar loops.

A split run is then bitwise equal to the same procedure on the whole image
(``single_node``), which for an odd kernel padded 'same' with zeros is OpenCV's own call on
the whole image, while OpenCV filters directly: below DIRECT_TAPS kernel taps.  At and
above that it may switch to its DFT path, whose results depend on the tile's size: within
``tolerance`` of torch there.  A tile that spans the image's rows from a column ALIGN
divides (row bands: every tile of a partition by rows) needs no row ends again."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from haloconv.compute.backends.base import Backend, ByDtype, as_array, dilated, effective_kernel, is_filter
from haloconv.tiling.spec import ConvSpec

if TYPE_CHECKING:
    import torch

# OpenCV's filter2D filters directly below 50 taps in every depth (it may use its DFT from
# 50 taps in float64, 130 in float32: filter.dispatch.cpp, dftFilter2D)
DIRECT_TAPS = 50
# columns past the last kept output in every call: more than the widest SIMD vector
# (16 floats with AVX-512) so the kept outputs are never in a call's scalar tail
TAIL = 32
# a call computing the image's last columns starts a multiple of this many columns from the
# image's first: its loops (SIMD vectors, their unrolled groups, narrower vectors, scalar)
# split those columns as the whole image's call does
ALIGN = 64


Filter = Callable[[np.ndarray, np.ndarray | None], np.ndarray]  # (src, dst) -> dst, kernel at its centre


def filter2d(kernel: np.ndarray) -> Filter:
    """OpenCV's filter2D with ``kernel`` anchored at its centre, zeros beyond the source."""
    return lambda src, dst: cv2.filter2D(src, -1, kernel, dst=dst, borderType=cv2.BORDER_CONSTANT)


def direct(h: int, w: int, shape: tuple[int, int], pads: Sequence[int]) -> bool:
    """Whether correlate2d filters an h x w output in one call on the plane itself (else
    from a padded copy): when it is larger than a few strips, padded no further than the
    kernel's centre."""
    (kh, kw), (top, bottom, left, right) = shape, pads
    ah, aw = kh // 2, kw // 2
    return (h * w > 4 * (TAIL + kw) ** 2 and top <= ah and bottom <= kh - 1 - ah and left <= aw
            and right <= kw - 1 - aw)


def correlate2d(plane: np.ndarray, shape: tuple[int, int], pads: Sequence[int], out: np.ndarray,
                filt: Filter, place: tuple[int, int] | None, copy: bool = False) -> None:
    """``out`` = the valid 2-D cross-correlation of ``plane`` zero-padded by ``pads`` (top,
    bottom, left, right) with the kernel of ``shape`` that ``filt`` applies (filter2D or
    sepFilter2D), every output as the image's own OpenCV call computes it (see the module
    docstring).  ``place``: (the column of out's first output in the image's output, that
    output's width) where the image's call reads OpenCV's zero border past its last column;
    None: every output from a call's SIMD body.  ``copy``: always from an explicitly padded copy."""
    (kh, kw), (top, bottom, left, right), (rows, cols) = shape, pads, plane.shape
    h, w = out.shape
    if h <= 0 or w <= 0:
        return
    ah, aw = kh // 2, kw // 2  # the centre: output (i, j) of a call reads source rows i - ah ..
    redo = min(w, TAIL + kw)  # the last outputs of each row, computed again
    # out's columns from ``end`` on are among the image's last TAIL, which a call ending where
    # the image's does computes (one that does not, the same columns in its SIMD body or not)
    end = w if place is None else min(max(place[1] - TAIL - place[0], 0), w)
    if copy or not direct(h, w, shape, pads):
        # small, or padded past the centre: one call on a copy padded explicitly, ``lead``
        # columns before out's first; TAIL zero columns after out's last, or, where out reaches
        # the image's last TAIL columns, ending where the image's call does and starting a
        # multiple of ALIGN from where it does (the plane's columns past it are zero padding)
        if end < w:
            lead = aw + (place[0] - aw) % ALIGN
            width = lead + place[1] - place[0]
        else:
            lead, width = aw, cols + left + right + TAIL
        buf = _scratch(0, (rows + top + bottom, width), plane.dtype)
        buf.fill(0)
        at = lead - aw + left
        buf[top:top + rows, at:at + cols] = plane[:, :width - at]
        out[...] = filt(buf, _scratch(1, buf.shape, buf.dtype))[ah:ah + h, lead:lead + w]
        return
    # the call sees the plane from where output (0, 0) centres its kernel: (ah - top, aw - left),
    # h x w of it, so its output is ``out``; OpenCV's zero border is right where it is the
    # padding, wrong where the plane goes on (the first ah rows when top < ah, ...): those
    # rows and columns again below, with the last columns of each row
    if plane.strides[1] != plane.itemsize:
        plane = np.ascontiguousarray(plane)
    src = plane[ah - top:ah - top + h, aw - left:aw - left + w]
    if out.flags.c_contiguous:
        filt(src, out)
    else:
        out[...] = filt(src, None)

    def again(i0: int, i1: int, j0: int, j1: int) -> None:  # outputs [i0, i1) x [j0, j1) from what they read
        r0, r1 = i0 - top, i1 - top + kh - 1  # plane rows read
        c0, c1 = j0 - left, j1 - left + kw - 1
        sub = plane[max(r0, 0):min(r1, rows), max(c0, 0):min(c1, cols)]
        correlate2d(sub, shape, (max(-r0, 0), max(r1 - rows, 0), max(-c0, 0), max(c1 - cols, 0)),
                    out[i0:i1, j0:j1], filt, None if place is None else (place[0] + j0, place[1]), copy=True)

    if top < ah:
        again(0, min(ah, h), 0, w)
    if bottom < kh - 1 - ah:
        again(max(h - (kh - 1 - ah), 0), h, 0, w)
    if left < aw:
        again(0, h, 0, min(aw, w))
    # the row ends, the columns past the plane's when right < kw - 1 - aw, and the image's last
    # columns; none when this call is the image's own from a multiple of ALIGN on
    if not (place is not None and place[0] + w == place[1] and place[0] % ALIGN == 0 and right == kw - 1 - aw):
        again(0, h, min(end, w - redo), w)


_scratches = threading.local()


def _scratch(slot: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A buffer of this thread's, used again by the next call of the same shape: the
    row-end strips a call computes again are as tall as its tile (a few MB at 8192 rows),
    and mapping, faulting in and unmapping fresh ones for every tile would cost more than
    filtering them.  A thread keeps a few per slot, the last shapes it used, none larger
    than SCRATCH_MAX_BYTES: a whole tile copied (padded past the kernel's centre) is not
    kept once its call is done."""
    if math.prod(shape) * np.dtype(dtype).itemsize > SCRATCH_MAX_BYTES:
        return np.empty(shape, dtype)
    kept = _scratches.__dict__.setdefault(slot, {})
    key = (tuple(shape), np.dtype(dtype).str)
    if key not in kept:
        if len(kept) >= SCRATCH_SHAPES:
            kept.pop(next(iter(kept)))
        kept[key] = np.empty(shape, dtype)
    return kept[key]


SCRATCH_SHAPES = 4  # per thread and slot: a tile's row-end strip, its top and bottom rows, one more
SCRATCH_MAX_BYTES = 16 << 20  # a row-end strip of a 16384-row tile in float64 is 13 MB


class OpenCV(Backend):
    name = "opencv"
    exact = True
    tolerance = ByDtype(float32=1e-5, float64=1e-12)
    guarantee = (f"bitwise equal to OpenCV filter2D on the whole image (kernels under {DIRECT_TAPS} taps; "
                 "larger: within 1e-5 (float32) / 1e-12 (float64) x max|y| of torch)")
    # per output x tap; per output: filter2D on one thread, 8192^2 float32, kernels 3x3 to 15x15
    default_rates = {"opencv.taps": 4.2e-11, "opencv.pixels": 3.7e-10}
    # filter2D on 2 threads against 1, the same 8192^2 image: 1.37x (3x3) to 1.85x (15x15)
    default_call_efficiency = ((9, 0.68), (49, 0.89), (225, 0.93))

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
        import torch

        xs = as_array(window)
        computed = [n + 2 * p - k + 1 for n, p, k in zip(xs.shape[2:], spec.backend_pad, effective_kernel(spec))]
        out = np.empty((*xs.shape[:2], *computed), xs.dtype)
        self.fill_channels(xs, as_array(weight), spec, (0, 0), out, torch.get_num_threads(), None)
        return torch.from_numpy(out).to(window.device)

    def compute(self, window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec,
                groups: int, torch_backend: object, first: Sequence[int], out_shape: Sequence[int],
                out: torch.Tensor | None = None, *, origin: Sequence[int]) -> torch.Tensor:
        """At stride 1, only the kept outputs are computed, straight into ``out`` if given."""
        import torch

        if not self.computes_arrays(spec) or (out is not None and out.device.type != "cpu"):
            return super().compute(window, weight, bias, spec, groups, torch_backend, first, out_shape, out,
                                   origin=origin)
        dest = out if out is not None else window.new_empty((*window.shape[:2], *out_shape))
        self.compute_array(as_array(window), as_array(weight), None if bias is None else as_array(bias), spec, first,
                           dest.numpy(), torch.get_num_threads(), origin=origin)
        return dest

    def computes_arrays(self, spec: ConvSpec) -> bool:
        return all(s == 1 for s in spec.stride)

    def compute_array(self, window: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec,
                      first: Sequence[int], out: np.ndarray, threads: int, *, origin: Sequence[int]) -> None:
        self.fill_channels(window, weight, spec, first, out, threads, origin)
        if bias is not None:
            out += bias.reshape(1, -1, *([1] * spec.ndim))

    def fill_channels(self, window: np.ndarray, weight: np.ndarray, spec: ConvSpec, first: Sequence[int],
                      out: np.ndarray, threads: int, origin: Sequence[int] | None) -> None:
        ks = dilated(weight, spec.dilation)
        fill(window, ks.shape[2:], spec, first, out, lambda c: filter2d(ks[c, 0]), threads, origin)

    def work(self, spec: ConvSpec, window: Sequence[int], out: Sequence[int], groups: int) -> dict[str, float]:
        pixels = out[0] * out[1] * math.prod(w + 2 * p for w, p in zip(window[2:], spec.backend_pad))
        return {"opencv.taps": pixels * math.prod(effective_kernel(spec)), "opencv.pixels": pixels}

    def calibration(self, side: int) -> list[ConvSpec]:
        return [ConvSpec.from_args((1, 1, 8 * side, 8 * side), (1, 1, k, k), None, padding=k // 2) for k in (3, 7)]

    def concurrency_probe(self) -> tuple[tuple, tuple]:
        return (1, 1, 1024, 2048), (1, 1, 5, 5)


def fill(xs: np.ndarray, kernel_shape: Sequence[int], spec: ConvSpec, first: Sequence[int], out: np.ndarray,
         channel_filter: Callable[[int], Filter], threads: int, origin: Sequence[int] | None) -> None:
    """Every channel c of the window ``xs`` filtered by ``channel_filter(c)`` (a kernel of
    ``kernel_shape``, dilation included): the outputs ``first`` on of the window's padded
    valid correlation (spec.backend_pad), as many as ``out`` holds, which are the image's
    outputs from ``origin`` on (None: out is not a box of the output: strided outputs);
    OpenCV on ``threads`` cores (one setting per process: the engines give every tile the same)."""
    cv2.setNumThreads(threads)
    # the part of the window the kept outputs read, and the zeros beyond it, per axis
    cut, pads = [], []
    for f, n, k, p, size in zip(first, out.shape[2:], kernel_shape, spec.backend_pad, xs.shape[2:]):
        lo, hi = f - p, f + n + k - 1 - p  # window indices read by outputs [f, f + n)
        cut.append(slice(max(lo, 0), min(hi, size)))
        pads.append((max(-lo, 0), max(hi - size, 0)))
    (top, bottom), (left, right) = pads
    filters = [channel_filter(c) for c in range(xs.shape[1])]
    # the image's call reads OpenCV's zero border past its last column where the zero padding
    # there reaches the kernel's right arm (the backend padding: the rest is in the windows)
    reach = kernel_shape[1] - 1 - kernel_shape[1] // 2
    place = None if origin is None or spec.backend_pad[1] != reach else (origin[1], spec.out_spatial[1])
    for n in range(xs.shape[0]):
        for c in range(xs.shape[1]):
            correlate2d(xs[n, c][tuple(cut)], tuple(kernel_shape), (top, bottom, left, right), out[n, c], filters[c],
                        place)


BACKEND = OpenCV()
