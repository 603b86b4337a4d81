"""Backend 'fft': cross-correlation by real FFTs over each tile's window (a tile is one
block of an overlap-add), any channels/groups/stride/dilation.  Not bitwise: transform
lengths differ per tile; within ``tolerance[dtype] x max|y|`` of torch's result
(tests/test_backends.py).  A window is transformed in blocks of output rows
(``fft_blocks``), which both the compute and its operation counts follow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from haloconv.compute.backends.base import Backend, ByDtype, dilated, padded
from haloconv.tiling.spec import ConvSpec

if TYPE_CHECKING:
    import torch

# a window is transformed in blocks of output rows of about this many elements
# (overlap-add: each block reads its rows plus the kernel's reach)
FFT_BLOCK_ELEMENTS = 1 << 18


def fft_blocks(shape: Sequence[int], cout: int, reach: int) -> list[tuple[int, int]]:
    """(output rows, how many blocks) of the FFT of an input of ``shape`` (N, C_in, *spatial,
    backend padding included) with ``cout`` output channels and a kernel reaching ``reach``
    along the first spatial axis: blocks of about FFT_BLOCK_ELEMENTS elements (all samples
    and channels of a row), at least 4 x ``reach`` rows, the last one shorter."""
    valid = shape[2] - reach + 1
    per_row = math.prod(shape[3:]) * shape[0] * max(shape[1], cout)
    rows = max(4 * reach, FFT_BLOCK_ELEMENTS // max(1, per_row))
    if rows >= valid:
        return [(valid, 1)]
    full, rest = divmod(valid, rows)
    return [(rows, full)] + ([(rest, 1)] if rest else [])


def fft_sizes(shape: Sequence[int]) -> list[int]:
    """Transform lengths of an input block of ``shape``: the next 5-smooth length at least
    as long (a block's valid outputs are free of the circular wrap-around at any length >=
    its own), far faster than a prime length."""
    return [next_smooth(int(n)) for n in shape]


def next_smooth(n: int) -> int:
    """The least 2^a 3^b 5^c >= n: scipy.fft.next_fast_len(n, real=True), which the tests
    compare it with.  Computed here because the cost model prices FFT tiles while planning
    any filter, and importing scipy.fft costs more than planning (or OpenCV filtering a
    large image)."""
    best = 1 << max(0, (n - 1).bit_length())  # the next power of 2 bounds the search
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35 << max(0, (-(-n // p35) - 1).bit_length())  # times the least power of 2 reaching n
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


class Fft(Backend):
    name = "fft"
    exact = False
    tolerance = ByDtype(float32=1e-4, float64=1e-10)
    guarantee = "within 1e-4 (float32) / 1e-10 (float64) x max|y| of torch's convolution"
    # per real element x log2(size) of each forward/inverse transform; per complex
    # multiply-add of the channel mixing
    default_rates = {"fft.nlogn": 0.26e-9, "fft.mac": 4.4e-9}

    def correlate(self, window: torch.Tensor, weight: torch.Tensor, spec: ConvSpec, groups: int) -> torch.Tensor:
        x = padded(window, spec)
        k = dilated(weight, spec.dilation)
        reach = k.shape[2]
        valid = x.shape[2] - reach + 1
        blocks = fft_blocks(x.shape, k.shape[0], reach)
        if blocks == [(valid, 1)]:
            return _block(x, k, spec.ndim, groups)
        out = x.new_empty((x.shape[0], k.shape[0], valid, *(a - b + 1 for a, b in zip(x.shape[3:], k.shape[3:]))))
        r0 = 0
        for rows, count in blocks:
            kf = _kernel_fft(k, (rows + reach - 1, *x.shape[3:]), spec.ndim)  # once per block length
            for _ in range(count):
                out[:, :, r0:r0 + rows] = _block(x[:, :, r0:r0 + rows + reach - 1], k, spec.ndim, groups, kf)
                r0 += rows
        return out

    def work(self, spec: ConvSpec, window: Sequence[int], out: Sequence[int], groups: int) -> dict[str, float]:
        """Per block: the samples' input and output channels forward and back; the kernel
        once per block length; the channel mixing on the half spectrum."""
        n, cin, cout = window[0], window[1], out[1]
        cin_g = spec.in_channels // spec.groups
        padded_shape = [w + 2 * p for w, p in zip(window[2:], spec.backend_pad)]
        reach = (spec.kernel[0] - 1) * spec.dilation[0] + 1
        transforms = macs = 0.0
        for rows, count in fft_blocks((n, cin, *padded_shape), cout, reach):
            sizes = fft_sizes((rows + reach - 1, *padded_shape[1:]))
            size = math.prod(sizes)
            transforms += (count * n * (cin + cout) + cout * cin_g) * size * math.log2(max(size, 2))
            macs += count * n * cout * cin_g * size // sizes[-1] * (sizes[-1] // 2 + 1)
        return {"fft.nlogn": transforms, "fft.mac": macs}

    def calibration(self, side: int) -> list[ConvSpec]:  # two shapes, two counts in different mixes
        return [ConvSpec.from_args((1, c, s, s), (c, c, k, k), None, padding=k // 2)
                for s, c, k in ((4 * side, 1, 15), (side, 8, 9))]

    def concurrency_probe(self) -> tuple[tuple, tuple]:
        return (1, 1, 1024, 1024), (1, 1, 15, 15)


def _kernel_fft(k: torch.Tensor, shape, nd: int) -> torch.Tensor:
    import torch

    return torch.fft.rfftn(k, s=fft_sizes(shape), dim=tuple(range(-nd, 0))).conj()  # correlation: X * conj(K)


def _block(x: torch.Tensor, k: torch.Tensor, nd: int, groups: int, kf: torch.Tensor | None = None) -> torch.Tensor:
    import torch

    dims = tuple(range(-nd, 0))
    size = fft_sizes(x.shape[2:])
    xf = torch.fft.rfftn(x, s=size, dim=dims)
    kf = _kernel_fft(k, x.shape[2:], nd) if kf is None else kf
    n, cin = x.shape[:2]
    cout = k.shape[0]
    xf = xf.reshape(n, groups, cin // groups, *xf.shape[2:])
    kf = kf.reshape(groups, cout // groups, cin // groups, *kf.shape[2:])
    yf = torch.einsum("ngc...,goc...->ngo...", xf, kf).reshape(n, cout, *xf.shape[3:])
    del xf
    y = torch.fft.irfftn(yf, s=size, dim=dims)
    return y[(slice(None), slice(None), *(slice(0, a - b + 1) for a, b in zip(x.shape[2:], k.shape[2:])))]


BACKEND = Fft()
