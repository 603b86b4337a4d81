"""Backend 'ndimage': scipy.ndimage.correlate per channel, for single-channel filters
(C_in = C_out = groups, or one channel) at stride 1.  Each output is the same sum in the
same order whatever the tile, so a split run is bitwise equal to ndimage on the whole
input; it accumulates in float64 and differs from torch in the last bits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from haloconv.compute.backends.base import Backend, as_array, dilated, effective_kernel, is_filter, padded
from haloconv.planning.spec import ConvSpec

if TYPE_CHECKING:
    import torch


class Ndimage(Backend):
    name = "ndimage"
    exact = True
    guarantee = "bitwise equal to scipy.ndimage.correlate on the whole input"
    libraries = ("scipy.ndimage",)
    default_rates = {"ndimage.taps": 1 / 0.92e9}  # per output x kernel tap (window padded), float64 sums

    def unsupported(self, spec: ConvSpec) -> str | None:
        if not is_filter(spec):
            return ("backend='ndimage' computes single-channel filters only (C_in = C_out = groups, or one channel), "
                    f"got C_in={spec.in_channels} C_out={spec.out_channels} groups={spec.groups}")
        if any(s != 1 for s in spec.stride):
            return f"backend='ndimage' needs stride 1, got stride={spec.stride}"
        return None

    def correlate(self, window: torch.Tensor, weight: torch.Tensor, spec: ConvSpec, groups: int) -> torch.Tensor:
        """ndimage's 'constant' mode reads zeros beyond the window, which is the backend
        padding, so the window is not copied into a padded one when the padding fits
        inside the kernel's reach; the outputs are written straight into one array."""
        import scipy.ndimage
        import torch

        xs, ks = as_array(window), as_array(dilated(weight, spec.dilation))
        kshape, pad = ks.shape[2:], spec.backend_pad

        def layout(pad):
            # output o of the padded valid correlation is ndimage's output at o + K//2 - pad
            n_out = tuple(n + 2 * p - m + 1 for n, p, m in zip(xs.shape[2:], pad, kshape))
            return n_out, tuple(m // 2 - p for m, p in zip(kshape, pad))

        n_out, lo = layout(pad)
        if not all(a >= 0 and a + v <= n for a, v, n in zip(lo, n_out, xs.shape[2:])):
            # some outputs sit beyond ndimage's same-size output (even kernels, wide padding): pad for real
            xs = as_array(padded(window, spec))
            n_out, lo = layout((0,) * len(pad))
        same = all(v == 0 for v in lo) and n_out == xs.shape[2:]
        out = np.empty((*xs.shape[:2], *(n_out if not same else xs.shape[2:])), dtype=xs.dtype)
        full = None if same else np.empty(xs.shape[2:], dtype=xs.dtype)
        for n in range(xs.shape[0]):
            for c in range(xs.shape[1]):
                if same:
                    scipy.ndimage.correlate(xs[n, c], ks[c, 0], output=out[n, c], mode="constant")
                else:
                    scipy.ndimage.correlate(xs[n, c], ks[c, 0], output=full, mode="constant")
                    out[n, c] = full[tuple(slice(a, a + v) for a, v in zip(lo, n_out))]
        return torch.from_numpy(out).to(window.device)

    def work(self, spec: ConvSpec, window: Sequence[int], out: Sequence[int], groups: int) -> dict[str, float]:
        full = math.prod(w + 2 * p for w, p in zip(window[2:], spec.backend_pad))
        return {"ndimage.taps": out[0] * out[1] * full * math.prod(effective_kernel(spec))}

    def calibration(self, side: int) -> list[ConvSpec]:
        return [ConvSpec.from_args((1, 1, 4 * side, 4 * side), (1, 1, k, k), None, padding=k // 2) for k in (3, 7)]

    def concurrency_probe(self) -> tuple[tuple, tuple]:
        return (1, 1, 1024, 2048), (1, 1, 3, 3)


BACKEND = Ndimage()
