"""Backends 'ndimage' and 'ndimage1d': scipy.ndimage.correlate, and correlate1d along a
kernel's one long axis, per channel, for single-channel filters (C_in = C_out = groups, or
one channel) at stride 1.  Each output is the same sum in the same order whatever the tile,
so a split run is bitwise equal to scipy.ndimage on the whole input (correlate and
correlate1d round differently: correlate1d adds the taps of a symmetric kernel in pairs).
They compute numpy arrays of any real dtype, as scipy does: sums in float64, the result
converted to the output's dtype (an integer output truncated, as scipy's C cast does); the
tensor path accumulates in float64 too and differs from torch in the last bits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from haloconv.compute.backends.base import Backend, as_array, dilated, effective_kernel, is_filter, padded
from haloconv.tiling.spec import ConvSpec

if TYPE_CHECKING:
    import torch

# what compute_array takes: scipy.ndimage's real dtypes (bool and float16 are converted by the caller)
ARRAY_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32,
                                           np.uint64, np.int64, np.float32, np.float64))


class Ndimage(Backend):
    name = "ndimage"
    exact = True
    guarantee = "bitwise equal to scipy.ndimage.correlate on the whole input"
    libraries = ("scipy.ndimage",)
    default_rates = {"ndimage.taps": 1 / 0.92e9}  # per output x kernel tap (window padded), float64 sums

    def unsupported(self, spec: ConvSpec) -> str | None:
        if not is_filter(spec):
            return (f"backend={self.name!r} computes single-channel filters only (C_in = C_out = groups, or one "
                    f"channel), got C_in={spec.in_channels} C_out={spec.out_channels} groups={spec.groups}")
        if any(s != 1 for s in spec.stride):
            return f"backend={self.name!r} needs stride 1, got stride={spec.stride}"
        return None

    def computes_arrays(self, spec: ConvSpec) -> bool:
        return self.unsupported(spec) is None

    def array_dtypes(self, x_dtype, weight_dtype, out_dtype) -> str | None:
        if np.dtype(x_dtype) not in ARRAY_DTYPES or np.dtype(out_dtype) not in ARRAY_DTYPES:
            return f"backend {self.name!r} computes {', '.join(map(str, ARRAY_DTYPES))}, got {x_dtype} -> {out_dtype}"
        if np.dtype(weight_dtype) not in (np.float32, np.float64):
            return f"backend {self.name!r} takes float32 or float64 filters, got {weight_dtype}"
        return None

    def call(self, x: np.ndarray, k: np.ndarray, out: np.ndarray) -> None:
        """scipy on one channel's window, every output into ``out`` (x's shape), zeros beyond."""
        import scipy.ndimage

        scipy.ndimage.correlate(x, k, output=out, mode="constant")

    def compute_array(self, window: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec,
                      first: Sequence[int], out: np.ndarray, threads: int, *, origin: Sequence[int]) -> None:
        """ndimage's 'constant' mode reads zeros beyond the window, which is the backend
        padding, so the window is not copied into a padded one when the kept outputs fall
        inside it; each channel's outputs go to one buffer, the kept ones into ``out``."""
        ks = dilated(weight, spec.dilation)
        kshape, pad = ks.shape[2:], spec.backend_pad
        # kept output t reads the padded window from first+t: ndimage's output at first+t+K//2-pad
        lo = [f + m // 2 - p for f, m, p in zip(first, kshape, pad)]
        n_out = out.shape[2:]
        if not all(a >= 0 and a + v <= n for a, v, n in zip(lo, n_out, window.shape[2:])):
            # some outputs sit beyond ndimage's same-size output (even kernels, wide padding): pad for real
            window = padded(window, spec)
            lo = [f + m // 2 for f, m in zip(first, kshape)]
        keep = tuple(slice(a, a + v) for a, v in zip(lo, n_out))
        # every output of the call is kept, and goes straight into out: no buffer
        direct = keep == tuple(slice(0, n) for n in window.shape[2:]) and out[0, 0].flags.c_contiguous
        buf = None if direct else np.empty(window.shape[2:], out.dtype)
        for n in range(window.shape[0]):
            for c in range(window.shape[1]):
                if direct:
                    self.call(window[n, c], ks[c, 0], out[n, c])
                else:
                    self.call(window[n, c], ks[c, 0], buf)
                    out[n, c] = buf[keep]
        if bias is not None:
            out += bias.reshape(1, -1, *([1] * spec.ndim)).astype(out.dtype)

    def correlate(self, window: torch.Tensor, weight: torch.Tensor, spec: ConvSpec, groups: int) -> torch.Tensor:
        """The padded valid correlation on tensors: compute_array on the whole of it."""
        import torch

        xs, ks = as_array(window), as_array(weight)
        n_out = tuple(n + 2 * p - r + 1 for n, p, r in zip(xs.shape[2:], spec.backend_pad, effective_kernel(spec)))
        out = np.empty((*xs.shape[:2], *n_out), xs.dtype)
        self.compute_array(xs, ks, None, spec, (0,) * spec.ndim, out, 1, origin=(0,) * spec.ndim)
        return torch.from_numpy(out).to(window.device)

    def work(self, spec: ConvSpec, window: Sequence[int], out: Sequence[int], groups: int) -> dict[str, float]:
        full = math.prod(w + 2 * p for w, p in zip(window[2:], spec.backend_pad))
        return {f"{self.name}.taps": out[0] * out[1] * full * math.prod(effective_kernel(spec))}

    def calibration(self, side: int) -> list[ConvSpec]:
        return [ConvSpec.from_args((1, 1, 4 * side, 4 * side), (1, 1, k, k), None, padding=k // 2) for k in (3, 7)]

    def concurrency_probe(self) -> tuple[tuple, tuple]:
        return (1, 1, 1024, 2048), (1, 1, 3, 3)


BACKEND = Ndimage()
