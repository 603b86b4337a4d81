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

from collections.abc import Sequence

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from haloconv.compute import kernels
from haloconv.planning.backends import BACKENDS, backend_unsupported, fft_blocks, fft_sizes
from haloconv.planning.spec import ConvSpec

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


def _ndimage(window: torch.Tensor, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """Each channel of the window correlated with its own filter, as the conv backend would
    on the window padded by spec.backend_pad: outputs of that padded valid correlation.

    ndimage's 'constant' mode reads zeros beyond the window, which is the backend padding,
    so the window is not copied into a padded one when the padding fits inside the kernel's
    reach; the outputs are written straight into one array."""
    k = _dilated(weight, spec.dilation)
    xs, ks = window.detach().cpu().numpy(), k.detach().cpu().numpy()
    kshape, pad = ks.shape[2:], spec.backend_pad

    def layout(pad):
        # output o of the padded valid correlation is ndimage's output at o + K//2 - pad
        n_out = tuple(n + 2 * p - m + 1 for n, p, m in zip(xs.shape[2:], pad, kshape))
        return n_out, tuple(m // 2 - p for m, p in zip(kshape, pad))

    n_out, lo = layout(pad)
    if not all(a >= 0 and a + v <= n for a, v, n in zip(lo, n_out, xs.shape[2:])):
        # some outputs sit beyond ndimage's same-size output (even kernels, wide padding): pad for real
        xs = _backend_padded(window, spec).detach().cpu().numpy()
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


def _fft(x: torch.Tensor, weight: torch.Tensor, spec: ConvSpec, groups: int) -> torch.Tensor:
    """Valid cross-correlation (all channels, ``groups`` groups) by real FFTs, in blocks of
    output rows along the first spatial axis."""
    k = _dilated(weight, spec.dilation)
    reach = k.shape[2]
    valid = x.shape[2] - reach + 1
    blocks = fft_blocks(x.shape, k.shape[0], reach)  # planning.backends: the cost model's blocks too
    if blocks == [(valid, 1)]:
        return _fft_block(x, k, spec.ndim, groups)
    out = x.new_empty((x.shape[0], k.shape[0], valid, *(a - b + 1 for a, b in zip(x.shape[3:], k.shape[3:]))))
    r0 = 0
    for rows, count in blocks:
        kf = _kernel_fft(k, (rows + reach - 1, *x.shape[3:]), spec.ndim)  # once per block length
        for _ in range(count):
            out[:, :, r0:r0 + rows] = _fft_block(x[:, :, r0:r0 + rows + reach - 1], k, spec.ndim, groups, kf)
            r0 += rows
    return out


def _kernel_fft(k: torch.Tensor, shape, nd: int) -> torch.Tensor:
    return torch.fft.rfftn(k, s=fft_sizes(shape), dim=tuple(range(-nd, 0))).conj()  # correlation: X * conj(K)


def _fft_block(x: torch.Tensor, k: torch.Tensor, nd: int, groups: int, kf: torch.Tensor | None = None) -> torch.Tensor:
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


def compute(method: str, window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec,
            groups: int, torch_backend: object, first: Sequence[int], out_shape: Sequence[int]) -> torch.Tensor:
    """One tile's output box from its window with ``method``."""
    if method == "torch":
        return kernels.conv_tile(window, weight, bias, spec, groups, torch_backend, first, out_shape)
    if method == "ndimage":
        y = _ndimage(window, weight, spec)
    else:
        y = _fft(_backend_padded(window, spec), weight, spec, groups)
    y = _keep(y, spec.stride, first, out_shape)
    if bias is not None:
        y = y + bias.view(1, -1, *([1] * spec.ndim))
    return y  # like conv_tile: a view of the computed outputs when it can be (no copy)


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
