"""Every padding mode in the halo math: torch's four, 'symmetric' (scipy.ndimage's
'reflect') and a constant value, with padding wider than the input (it folds as
scipy.ndimage extends a line by a longer kernel).  The oracle is scipy.ndimage itself:
geometry.source_index is checked against scipy's own extension, and split runs against
the single-node reference and against scipy.ndimage.correlate on the whole input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import haloconv
from conftest import assert_bitwise
from haloconv.compute import kernels
from haloconv.tiling import geometry
from haloconv.tiling.spec import SCIPY_MODES, ConvSpec

# haloconv's mode -> scipy.ndimage's name for it
TO_SCIPY = {"symmetric": "reflect", "reflect": "mirror", "circular": "wrap", "replicate": "nearest",
            "zeros": "constant", "constant": "constant"}
MODES = ["symmetric", "reflect", "circular", "replicate", "zeros", 2.5]


@pytest.mark.parametrize("mode", ["symmetric", "reflect", "circular", "replicate"])
@pytest.mark.parametrize("length", [1, 2, 3, 5])
def test_source_index_is_scipys_extension_of_a_line(mode, length):
    """A delta kernel at offset k reads position i+k: scipy's correlate1d shows which input
    index every position up to four lengths beyond either edge reads."""
    x = np.arange(1, length + 1, dtype=float)
    reach = 4 * length + 3
    for k in range(-reach, reach + 1):
        delta = np.zeros(2 * reach + 1)
        delta[reach + k] = 1
        scipy_reads = ndi.correlate1d(x, delta, mode=TO_SCIPY[mode]) - 1
        assert [geometry.source_index(i + k, length, mode) for i in range(length)] == list(scipy_reads)


@pytest.mark.parametrize("mode", ["symmetric", "reflect", "circular", "replicate", "zeros"])
def test_padding_runs_read_what_each_position_reads(mode):
    for length in (1, 2, 3, 7):
        for u, v in [(-30, 0), (length, length + 29), (-1, 0), (-2 * length - 1, -length + 1)]:
            read = []
            for r in geometry.padding_runs(u, v, length, mode, u):
                read += [None if r.src is None else r.src + r.step * i for i in range(r.length)]
            assert read == [geometry.source_index(p, length, mode) for p in range(u, v)]


def _same(k: int) -> tuple[int, int]:
    return k // 2, k - 1 - k // 2


reached: dict[str, int] = {}


@settings(max_examples=160)
@given(
    mode=st.sampled_from(MODES),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    kernel=st.tuples(st.integers(1, 11), st.integers(1, 11)),
    split=st.sampled_from([("rows", 2), ("rows", 3), ("cols", 2), ("grid", 4)]),
    seed=st.integers(0, 2**16),
)
def test_split_runs_equal_the_single_node_reference_and_scipy(mode, shape, kernel, split, seed):
    """A depthwise filter on 2 channels, padded 'same' (scipy's placement, origin 0), split:
    bitwise the single-node call on torch's backend; on backend 'ndimage', bitwise
    scipy.ndimage.correlate on the whole input with the same mode and cval."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, *shape, generator=g, dtype=torch.float64)
    w = torch.randn(2, 1, *kernel, generator=g, dtype=torch.float64)
    pad = tuple(_same(k) for k in kernel)
    part, workers = split
    spec = ConvSpec.from_args(x.shape, w.shape, None, padding=pad, padding_mode=mode, groups=2)
    y = haloconv.conv(x, w, padding=pad, padding_mode=mode, groups=2, partition=part, workers=workers,
                      backend="torch")
    assert_bitwise(y, kernels.single_node(x, w, None, spec))
    y = haloconv.conv(x, w, padding=pad, padding_mode=mode, groups=2, partition=part, workers=workers,
                      backend="ndimage")
    cval = mode if isinstance(mode, float) else 0.0
    for c in range(2):
        # 'same' padding puts k//2 before: scipy's centre of a kernel of k taps at origin 0
        whole = ndi.correlate(x[0, c].numpy(), w[c, 0].numpy(), mode=TO_SCIPY[spec.padding_mode], cval=cval)
        assert np.array_equal(y[0, c].numpy(), whole)
    reached[str(mode)] = reached.get(str(mode), 0) + 1
    if any(k > n for k, n in zip(kernel, shape)):
        reached["kernel longer than the input"] = reached.get("kernel longer than the input", 0) + 1
    if any(max(p) >= 2 * n for p, n in zip(pad, shape)):
        reached["padding folds twice"] = reached.get("padding folds twice", 0) + 1


def test_the_property_reaches_every_mode_and_long_kernels():
    reached.clear()
    test_split_runs_equal_the_single_node_reference_and_scipy()
    assert all(reached.get(str(m), 0) >= 5 for m in MODES), reached
    assert reached["kernel longer than the input"] >= 15 and reached["padding folds twice"] >= 5, reached


@pytest.mark.parametrize("mode", ["symmetric", -1.25, "reflect"])
def test_processes_master_exchange_and_gradients_follow_every_mode(mode, clusters):
    """Worker processes (halo exchange and the master's whole windows) and the backward
    pass, with padding wider than the input on one axis."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 6, 3, generator=g, dtype=torch.float64)
    w = torch.randn(3, 2, 5, 9, generator=g, dtype=torch.float64)
    pad = ((2, 2), (4, 4))  # 4 > 3 columns: folds
    spec = ConvSpec.from_args(x.shape, w.shape, None, padding=pad, padding_mode=mode)
    ref = kernels.single_node(x, w, None, spec)
    c = clusters(3)
    for part in ("rows", "grid"):
        assert_bitwise(haloconv.conv(x, w, padding=pad, padding_mode=mode, partition=part, engine=c), ref)
    assert_bitwise(haloconv.conv(x, w, padding=pad, padding_mode=mode, partition="rows", engine=c,
                                 exchange="master"), ref)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = haloconv.conv(xr, wr, padding=pad, padding_mode=mode, partition="rows", workers=3)
    grad = torch.randn(y.shape, generator=g, dtype=torch.float64)
    y.backward(grad)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    kernels.single_node(xs, ws, None, spec).backward(grad)
    assert torch.allclose(xr.grad, xs.grad) and torch.allclose(wr.grad, ws.grad)


def test_modes_and_paddings_are_validated_with_their_names():
    with pytest.raises(ValueError, match=r"padding_mode=cval"):
        ConvSpec.from_args((1, 1, 5, 5), (1, 1, 3, 3), padding=1, padding_mode="constant")
    with pytest.raises(ValueError, match=r"scipy.ndimage's 'mirror' is 'reflect' here"):
        ConvSpec.from_args((1, 1, 5, 5), (1, 1, 3, 3), padding=1, padding_mode="mirror")
    with pytest.raises(ValueError, match="NaN"):
        ConvSpec.from_args((1, 1, 5, 5), (1, 1, 3, 3), padding=1, padding_mode=float("nan"))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        ConvSpec.from_args((1, 1, 5, 5), (1, 1, 3, 3), padding=((1, -1), (1, 1)))
    # numpy integers, as torch takes them; a constant 0 is torch's 'zeros'
    s = ConvSpec.from_args((1, 1, 5, 5), (1, 1, 3, 3), padding=(np.int64(1), np.int32(2)), padding_mode=np.float32(0))
    assert s.pad_lo == (1, 2) and s.padding_mode == "zeros"
    assert set(SCIPY_MODES.values()) <= {"symmetric", "reflect", "circular", "replicate", "constant"}
