"""Backend 'separable': a 2-D single-channel or depthwise filter whose kernel is rank 1 (a
column times a row: Gaussian, box, Sobel, Prewitt...) as two 1-D passes, OpenCV's
``sepFilter2D`` — kh + kw multiply-adds per output instead of kh x kw.

Which kernels qualify depends on their values, not their shape (``refuses``): rank 1 to
within a few roundings of their dtype (a float32 Gaussian built as the outer product of
two 1-D ones is rank 1 only to its last bit).  The factors are a column and a row of the
kernel itself (``factors``), the same IEEE operations on every machine.  Every output is
computed in the SIMD body of an OpenCV call (compute/backends/opencv.py), so a split run is
bitwise equal to the same two passes on the whole image; the passes sum in another order
than the dense kernel, within ``tolerance`` x max|y| of torch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from haloconv.compute.backends.base import ByDtype, as_array, dilated, effective_kernel
from haloconv.compute.backends.opencv import OpenCV, fill
from haloconv.tiling.spec import ConvSpec

if TYPE_CHECKING:
    import torch

RANK1_EPS = 8  # a kernel is rank 1 when its factors rebuild it within this many eps x max|k|


def factors(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(along columns kx, along rows ky) with ky[i] x kx[j] = kernel[i, j] to within
    RANK1_EPS eps x max|kernel|; None when the kernel is not rank 1.  ky is the kernel's
    column through its largest entry, kx that entry's row divided by it."""
    k = kernel.astype(np.float64)
    r, c = np.unravel_index(np.argmax(np.abs(k)), k.shape)
    if k[r, c] == 0:
        return np.zeros(k.shape[1], kernel.dtype), np.zeros(k.shape[0], kernel.dtype)
    ky, kx = k[:, c], k[r, :] / k[r, c]
    if np.abs(k - np.outer(ky, kx)).max() > RANK1_EPS * np.finfo(kernel.dtype).eps * np.abs(k).max():
        return None
    return kx.astype(kernel.dtype), ky.astype(kernel.dtype)


class Separable(OpenCV):
    name = "separable"
    exact = True
    tolerance = ByDtype(float32=1e-5, float64=1e-12)
    guarantee = ("bitwise equal to the same two 1-D passes (OpenCV sepFilter2D) on the whole image; within 1e-5 "
                 "(float32) / 1e-12 (float64) x max|y| of torch")
    needs_values = True
    # per output x tap (kh + kw); per output: sepFilter2D on one thread, 8192^2 float32, box:5 to gaussian:2
    default_rates = {"separable.taps": 6.6e-11, "separable.pixels": 3.6e-10}
    # sepFilter2D on 2 threads against 1 on the same image: 1.24x for box:5, 2.4x from 15x15
    # (OpenCV's threaded passes beat two calls on halves of the image, 1.8x, there)
    default_call_efficiency = ((25, 0.62), (225, 1.21))

    def unsupported(self, spec: ConvSpec) -> str | None:
        why = super().unsupported(spec)
        return why.replace("'opencv'", "'separable'") if why else None

    def exact_for(self, spec: ConvSpec) -> bool:
        return True

    def refuses(self, weight) -> str | None:
        k = as_array(weight)
        bad = [c for c in range(k.shape[0]) if k.ndim == 4 and factors(k[c, 0]) is None]
        if k.ndim != 4 or bad:
            return (f"backend='separable' needs kernels of rank 1 (a column times a row); channel {bad[0]}'s "
                    "is not" if bad else "backend='separable' filters 2-D images only")
        return None

    def fill_channels(self, window: np.ndarray, weight: np.ndarray, spec: ConvSpec, first: Sequence[int],
                      out: np.ndarray, threads: int, origin: Sequence[int] | None) -> None:
        why = self.refuses(weight)
        if why is not None:
            raise ValueError(why)
        ks = dilated(weight, spec.dilation)
        pairs = [factors(ks[c, 0]) for c in range(ks.shape[0])]

        def sep(c: int):
            kx, ky = pairs[c]
            return lambda src, dst: cv2.sepFilter2D(src, -1, kx, ky, dst=dst, borderType=cv2.BORDER_CONSTANT)

        fill(window, ks.shape[2:], spec, first, out, sep, threads, origin)

    def work(self, spec: ConvSpec, window: Sequence[int], out: Sequence[int], groups: int) -> dict[str, float]:
        pixels = out[0] * out[1] * math.prod(w + 2 * p for w, p in zip(window[2:], spec.backend_pad))
        return {"separable.taps": pixels * sum(effective_kernel(spec)), "separable.pixels": pixels}

    def example_weight(self, spec: ConvSpec, generator: torch.Generator) -> torch.Tensor:
        import torch

        c, _, kh, kw = spec.weight_shape
        return torch.randn(c, 1, kh, 1, generator=generator) * torch.randn(c, 1, 1, kw, generator=generator)

    def calibration(self, side: int) -> list[ConvSpec]:
        return [ConvSpec.from_args((1, 1, 8 * side, 8 * side), (1, 1, k, k), None, padding=k // 2) for k in (3, 17)]

    def concurrency_probe(self) -> None:  # its probe would need rank-1 values: the filters' curve
        return None


BACKEND = Separable()
