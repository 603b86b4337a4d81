"""How a tile may be computed (the compute backends a Plan names) and the rules that
decide whether a backend can run a convolution; the FFT backend's block shapes, shared by
the compute (compute/methods.py) and the cost model (model/cost.py) so both agree."""

from __future__ import annotations

import math
from collections.abc import Sequence

import scipy.fft

from haloconv.planning.spec import ConvSpec

BACKENDS = ("torch", "ndimage", "fft")  # how a tile is computed (see compute/methods.py)


# backend 'fft' transforms a tile in blocks of output rows of about this many elements
# (overlap-add: each block reads its rows plus the kernel's reach)
FFT_BLOCK_ELEMENTS = 1 << 18


def fft_blocks(shape: Sequence[int], cout: int, reach: int, block_elements: int | None = None) -> list[tuple[int, int]]:
    """(output rows, how many blocks) of the FFT of an input of ``shape`` (N, C_in, *spatial,
    backend padding included) with ``cout`` output channels and a kernel reaching ``reach``
    along the first spatial axis: blocks of about ``block_elements`` elements (all samples
    and channels of a row), at least 4 x ``reach`` rows, the last one shorter.  methods._fft
    computes these blocks and cost.Profile.fft_seconds costs them."""
    valid = shape[2] - reach + 1
    per_row = math.prod(shape[3:]) * shape[0] * max(shape[1], cout)
    rows = max(4 * reach, (block_elements or FFT_BLOCK_ELEMENTS) // max(1, per_row))
    if rows >= valid:
        return [(valid, 1)]
    full, rest = divmod(valid, rows)
    return [(rows, full)] + ([(rest, 1)] if rest else [])


def fft_sizes(shape: Sequence[int]) -> list[int]:
    """Transform lengths of an input block of ``shape``: the next 5-smooth length at least
    as long (scipy's next_fast_len for real input; a block's valid outputs are free of the
    circular wrap-around at any length >= its own), far faster than a prime length."""
    return [scipy.fft.next_fast_len(int(n), real=True) for n in shape]


def backend_unsupported(backend: str, spec: ConvSpec) -> str | None:
    """Why compute backend ``backend`` cannot run ``spec`` (None when it can)."""
    if backend not in BACKENDS:
        return f"backend must be one of {BACKENDS} or 'auto', got {backend!r}"
    if backend == "ndimage":
        if not (spec.groups == spec.in_channels == spec.out_channels or spec.in_channels == spec.out_channels == 1):
            return ("backend='ndimage' computes single-channel filters only (C_in = C_out = groups, or one channel), "
                    f"got C_in={spec.in_channels} C_out={spec.out_channels} groups={spec.groups}")
        if any(s != 1 for s in spec.stride):
            return f"backend='ndimage' needs stride 1, got stride={spec.stride}"
    return None
