"""How a tile is computed: torch's direct convolution, scipy.ndimage, or FFT.

- 'torch'   kernels.conv_tile: bit for bit the single-node torch call.
- 'ndimage' scipy.ndimage.correlate per channel (single-channel filters: C_in = C_out =
            groups, or one channel), stride 1.  Each output is the same sum in the same
            order whatever the tile, so a split run is bitwise equal to ndimage on the
            whole input (``single_node(..., 'ndimage')``); it accumulates in float64 and
            differs from torch in the last bits.
- 'fft'     cross-correlation by real FFTs over the tile's window (a tile is one block of
            an overlap-add), any channels/groups/stride/dilation.  Not bitwise: within
            FFT_TOLERANCE x max|y| of torch's result.

Every method sees the same window (geometry.Axis.compute_window) and the same backend
padding as kernels.conv_tile, and keeps the same outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.fft
import scipy.ndimage
import torch
import torch.nn.functional as F

from haloconv import kernels
from haloconv.plan import BACKENDS, backend_unsupported
from haloconv.spec import ConvSpec

__all__ = ["BACKENDS", "FFT_TOLERANCE", "check", "compute", "label", "single_node"]

# max |y_fft - y_torch| <= FFT_TOLERANCE[dtype] * max |y_torch| (tests/test_methods.py)
FFT_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


def check(method: str, spec: ConvSpec) -> None:
    why = backend_unsupported(method, spec)
    if why is not None:
        raise ValueError(why)


def label(method: str, torch_backend: object) -> str:
    """What computed the tiles, for reports: torch's conv backend, or 'ndimage'/'fft'."""
    return kernels.backend_name(torch_backend) if method == "torch" else method


def _dilated(weight: torch.Tensor, dilation: Sequence[int]) -> torch.Tensor:
    """The kernel with d-1 zeros between taps: one dense kernel for every method."""
    if all(d == 1 for d in dilation):
        return weight
    k = weight.shape[2:]
    out = weight.new_zeros((*weight.shape[:2], *((n - 1) * d + 1 for n, d in zip(k, dilation))))
    out[(slice(None), slice(None), *(slice(None, None, d) for d in dilation))] = weight
    return out


def _backend_padded(window: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    pad = [p for p in reversed(spec.backend_pad) for _ in range(2)]
    return F.pad(window, pad) if any(pad) else window


def _keep(y: torch.Tensor, stride, first, out_shape) -> torch.Tensor:
    y = y[(slice(None), slice(None), *(slice(None, None, s) for s in stride))]
    return y[(slice(None), slice(None), *(slice(f, f + n) for f, n in zip(first, out_shape)))]


def _ndimage(x: torch.Tensor, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """Valid cross-correlation of each channel of ``x`` with its own filter."""
    k = _dilated(weight, spec.dilation)
    xs, ks = x.detach().cpu().numpy(), k.detach().cpu().numpy()
    kshape = ks.shape[2:]
    valid = tuple(n - m + 1 for n, m in zip(xs.shape[2:], kshape))
    # correlate centres the kernel at K//2: valid output i sits at i + K//2
    crop = tuple(slice(m // 2, m // 2 + v) for m, v in zip(kshape, valid))
    out = np.empty((*xs.shape[:2], *valid), dtype=xs.dtype)
    for n in range(xs.shape[0]):
        for c in range(xs.shape[1]):
            out[n, c] = scipy.ndimage.correlate(xs[n, c], ks[c, 0], mode="constant")[crop]
    return torch.from_numpy(out).to(x.device)


# FFT blocks: output rows per block, so that a block's transform stays cache- and memory-friendly
# (overlap-add over the tile: each block reads its rows plus the kernel's reach)
FFT_BLOCK_ELEMENTS = 1 << 18


def _fft(x: torch.Tensor, weight: torch.Tensor, spec: ConvSpec, groups: int) -> torch.Tensor:
    """Valid cross-correlation (all channels, ``groups`` groups) by real FFTs, in blocks of
    output rows along the first spatial axis."""
    k = _dilated(weight, spec.dilation)
    reach = k.shape[2]
    valid = x.shape[2] - reach + 1
    per_row = math.prod(x.shape[3:]) * x.shape[0] * max(x.shape[1], k.shape[0])
    rows = max(4 * reach, FFT_BLOCK_ELEMENTS // max(1, per_row))
    if rows >= valid:
        return _fft_block(x, k, spec.ndim, groups)
    out = x.new_empty((x.shape[0], k.shape[0], valid, *(a - b + 1 for a, b in zip(x.shape[3:], k.shape[3:]))))
    kf = None
    for r0 in range(0, valid, rows):
        r1 = min(valid, r0 + rows)
        block = x[:, :, r0:r1 + reach - 1]
        if kf is None or block.shape[2] != kf[0]:
            kf = (block.shape[2], _kernel_fft(k, block.shape[2:], spec.ndim))
        out[:, :, r0:r1] = _fft_block(block, k, spec.ndim, groups, kf[1])
    return out


def _sizes(shape) -> list[int]:
    return [scipy.fft.next_fast_len(n, real=True) for n in shape]


def _kernel_fft(k: torch.Tensor, shape, nd: int) -> torch.Tensor:
    return torch.fft.rfftn(k, s=_sizes(shape), dim=tuple(range(-nd, 0))).conj()  # correlation: X * conj(K)


def _fft_block(x: torch.Tensor, k: torch.Tensor, nd: int, groups: int, kf: torch.Tensor | None = None) -> torch.Tensor:
    dims = tuple(range(-nd, 0))
    size = _sizes(x.shape[2:])
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


def compute(method: str, window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec,
            groups: int, torch_backend: object, first: Sequence[int], out_shape: Sequence[int]) -> torch.Tensor:
    """One tile's output box from its window with ``method``."""
    if method == "torch":
        return kernels.conv_tile(window, weight, bias, spec, groups, torch_backend, first, out_shape)
    x = _backend_padded(window, spec)
    y = _ndimage(x, weight, spec) if method == "ndimage" else _fft(x, weight, spec, groups)
    y = _keep(y, spec.stride, first, out_shape)
    if bias is not None:
        y = y + bias.view(1, -1, *([1] * spec.ndim))
    return y.contiguous()


def single_node(method: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                spec: ConvSpec) -> torch.Tensor:
    """``method`` on the whole input: the reference a split run of it is compared with."""
    if method == "torch":
        return kernels.single_node(x, weight, bias, spec)
    check(method, spec)
    pad: list[int] = []
    for lo, hi, q in zip(reversed(spec.pad_lo), reversed(spec.pad_hi), reversed(spec.backend_pad)):
        pad += [lo - q, hi - q]  # the rest is the backend padding, applied below like a tile's
    if any(pad):
        x = F.pad(x, pad, mode="constant" if spec.padding_mode == "zeros" else spec.padding_mode)
    first = (0,) * spec.ndim
    return compute(method, x, weight, bias, spec, spec.groups, None, first, spec.out_spatial)
