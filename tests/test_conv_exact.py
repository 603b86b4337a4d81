"""haloconv.conv is bitwise equal to the single-node torch call (threads engine)."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from conftest import assert_bitwise, assert_single_node_exact, torch_conv, torch_reference
from haloconv.compute import kernels
from haloconv.tiling.spec import ConvSpec

DTYPES = (torch.float32, torch.float64)


@st.composite
def conv_case(draw, ndim=None):
    nd = draw(st.sampled_from((1, 2, 2, 3))) if ndim is None else ndim
    max_len = {1: 40, 2: 24, 3: 9}[nd]
    groups = draw(st.sampled_from((1, 1, 2, 3)))
    depthwise = draw(st.booleans()) and groups > 1
    c_in = groups * (1 if depthwise else draw(st.integers(1, 3)))
    c_out = groups * (1 if depthwise else draw(st.integers(1, 3)))
    n = draw(st.integers(1, 4))
    kernel = tuple(draw(st.integers(1, 5)) for _ in range(nd))
    dilation = tuple(draw(st.sampled_from((1, 1, 2, 3))) for _ in range(nd))
    mode = draw(st.sampled_from(("zeros", "zeros", "reflect", "replicate", "circular")))
    padding = draw(
        st.one_of(
            st.sampled_from(("same", "valid")),
            st.integers(0, 3),
            st.tuples(*(st.integers(0, 3) for _ in range(nd))),
        )
    )
    stride = 1 if padding == "same" else tuple(draw(st.sampled_from((1, 1, 2, 3))) for _ in range(nd))
    spatial = tuple(draw(st.integers(1, max_len)) for _ in range(nd))
    dtype = draw(st.sampled_from(DTYPES))
    bias = draw(st.booleans())
    workers = draw(st.integers(1, 6))
    partition = draw(
        st.one_of(
            st.sampled_from(("auto", "batch", "channels", "grid", "cols", "vertical")),
            st.sampled_from(("rows", "horizontal", "depth")).filter(
                lambda p: (p in ("rows", "horizontal") and nd >= 2) or (p == "depth" and nd == 3)
            ),
            st.tuples(*(st.integers(1, 3) for _ in range(nd + 2))),
        )
    )
    return dict(
        n=n, c_in=c_in, c_out=c_out, groups=groups, kernel=kernel, dilation=dilation, mode=mode,
        padding=padding, stride=stride, spatial=spatial, dtype=dtype, bias=bias, workers=workers,
        partition=partition,
    )


def _tensors(case, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case["n"], case["c_in"], *case["spatial"], generator=g, dtype=case["dtype"])
    w = torch.randn(case["c_out"], case["c_in"] // case["groups"], *case["kernel"], generator=g, dtype=case["dtype"])
    b = torch.randn(case["c_out"], generator=g, dtype=case["dtype"]) if case["bias"] else None
    return x, w, b


def _reference_or_none(x, w, b, case):
    try:
        return torch_reference(x, w, b, case["stride"], case["padding"], case["dilation"], case["groups"], case["mode"])
    except RuntimeError:
        return None  # torch rejects it (kernel larger than padded input, reflect pad too wide)


@given(conv_case())
def test_property_bitwise_equal_to_single_node(case):
    x, w, b = _tensors(case)
    ref = _reference_or_none(x, w, b, case)
    reference = lambda: _reference_or_none(x, w, b, case)  # noqa: E731
    if ref is None:
        # torch rejects it: a kernel beyond the padded input haloconv rejects too (ValueError);
        # reflect or circular padding wider than the input it folds as scipy.ndimage extends a
        # line, equal to its own single-node call (padded by index, compute/padding.py)
        try:
            spec = ConvSpec.from_args(x.shape, w.shape, None if b is None else b.shape, stride=case["stride"],
                                      padding=case["padding"], dilation=case["dilation"], groups=case["groups"],
                                      padding_mode=case["mode"])
        except ValueError:
            with pytest.raises(ValueError):
                torch_conv(x, w, b, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                           groups=case["groups"], padding_mode=case["mode"], workers=case["workers"])
            return
        assert case["mode"] in ("reflect", "circular"), case
        ref = kernels.single_node(x, w, b, spec)
        reference = lambda: ref  # noqa: E731
    part, workers = case["partition"], case["workers"]
    if isinstance(part, tuple):
        extents = (x.shape[0], case["groups"] if case["groups"] > 1 else case["c_out"], *ref.shape[2:])
        part = tuple(min(c, e) for c, e in zip(part, extents))
        workers = max(workers, math.prod(part))
    y = torch_conv(
        x, w, b, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
        groups=case["groups"], padding_mode=case["mode"], partition=part, workers=workers,
    )
    assert_single_node_exact(y, reference)


@given(conv_case(ndim=2), st.lists(st.floats(0.2, 5.0), min_size=1, max_size=6))
def test_property_weighted_splits_bitwise(case, weights):
    assume(case["partition"] in ("rows", "cols", "grid", "batch", "channels"))
    x, w, b = _tensors(case, seed=1)
    ref = _reference_or_none(x, w, b, case)
    assume(ref is not None)
    y = torch_conv(
        x, w, b, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
        groups=case["groups"], padding_mode=case["mode"], partition=case["partition"],
        workers=len(weights), worker_weights=weights,
    )
    assert_single_node_exact(y, lambda: _reference_or_none(x, w, b, case))


# --- named cases: the borders the naive split gets wrong -------------------------------------

CASES = [
    # (name, x shape, w shape, kwargs, partition, workers)
    ("uneven rows", (1, 3, 37, 29), (4, 3, 3, 3), dict(padding=1), "rows", 4),
    ("uneven grid", (2, 2, 31, 23), (3, 2, 5, 5), dict(padding=2), "grid", 6),
    ("tiles thinner than halo", (1, 2, 12, 10), (2, 2, 7, 7), dict(padding=3), "rows", 6),
    ("halo spans several owners, dilation", (1, 1, 14, 14), (1, 1, 3, 3), dict(padding=4, dilation=4), "grid", 6),
    ("stride 2 unaligned", (1, 3, 33, 35), (4, 3, 3, 3), dict(stride=2, padding=1), "rows", 3),
    ("stride 3 kernel 2", (2, 2, 40, 17), (3, 2, 2, 2), dict(stride=3), "grid", 4),
    ("circular 2 tiles: first and last are neighbours", (1, 2, 9, 9), (2, 2, 5, 5),
     dict(padding=2, padding_mode="circular"), "rows", 2),
    ("circular thin tiles", (1, 1, 7, 6), (1, 1, 5, 3), dict(padding=(2, 1), padding_mode="circular"), "grid", 6),
    ("reflect on thin edge tiles", (1, 2, 8, 8), (2, 2, 5, 5), dict(padding=3, padding_mode="reflect"), "rows", 6),
    ("replicate grid", (1, 1, 11, 13), (1, 1, 4, 4), dict(padding=3, padding_mode="replicate"), "grid", 4),
    ("same even kernel (asymmetric)", (1, 2, 20, 21), (3, 2, 4, 2), dict(padding="same"), "grid", 4),
    ("same even kernel reflect", (1, 2, 15, 16), (2, 2, 2, 4), dict(padding="same", padding_mode="reflect"),
     "grid", 3),
    ("depthwise", (2, 8, 25, 25), (8, 1, 3, 3), dict(padding=1, groups=8), "grid", 4),
    ("groups split by channels", (1, 6, 16, 16), (9, 2, 3, 3), dict(padding=1, groups=3), "channels", 3),
    ("batch smaller than workers", (2, 3, 10, 10), (4, 3, 3, 3), dict(padding=1), "batch", 5),
    ("channels smaller than workers", (1, 3, 10, 10), (2, 3, 3, 3), dict(padding=1), "channels", 5),
    ("hybrid tuple", (2, 3, 18, 14), (4, 3, 3, 3), dict(padding=1), (2, 2, 1, 2), 8),
    ("1-D signal", (2, 3, 100), (4, 3, 7), dict(padding=3, dilation=2), "cols", 5),
    # tiles of 4->8 k9 compute a multiple of 16 outputs (oneDNN's fast 1-D path), not 1667 + 4
    ("1-D long signal", (1, 4, 5003), (8, 4, 9), dict(padding=4), "cols", 3),
    ("3-D volume depth", (1, 2, 12, 10, 9), (3, 2, 3, 3, 3), dict(padding=1), "depth", 3),
    ("3-D volume grid", (1, 1, 10, 11, 12), (2, 1, 3, 2, 3), dict(padding=1, padding_mode="circular"),
     "grid", 8),
    ("valid, workers > rows", (1, 1, 6, 30), (1, 1, 5, 5), dict(), "rows", 5),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("name,xs,ws,kw,partition,workers", CASES, ids=[c[0] for c in CASES])
def test_named_case(name, xs, ws, kw, partition, workers, dtype):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(*xs, generator=g, dtype=dtype)
    w = torch.randn(*ws, generator=g, dtype=dtype)
    b = torch.randn(ws[0], generator=g, dtype=dtype)
    ref = torch_reference(x, w, b, **kw)
    y = torch_conv(x, w, b, partition=partition, workers=workers, **kw)
    assert_bitwise(y, ref)


def test_thread_dependent_single_node_case_matches_one_thread():
    """The documented limit, pinned: here torch's own result differs between 1 and 2
    threads (oneDNN GEMM path, 2 outputs per group); haloconv equals the 1-thread one."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 11, generator=g)
    w = torch.randn(12, 1, 5, generator=g)
    y = torch_conv(x, w, stride=2, dilation=2, groups=3, partition="batch", workers=5)
    assert_single_node_exact(y, lambda: torch_reference(x, w, None, stride=2, dilation=2, groups=3))


def test_naive_split_is_wrong_and_haloconv_is_right():
    """The motivating bug: convolving row bands separately loses the border rows."""
    x = torch.randn(1, 1, 32, 32)
    w = torch.randn(1, 1, 3, 3)
    ref = torch_reference(x, w, None, padding=1)
    naive = torch.cat([torch_reference(x[:, :, :16], w, None, padding=1),
                       torch_reference(x[:, :, 16:], w, None, padding=1)], 2)
    assert not torch.allclose(naive, ref)
    assert_bitwise(torch_conv(x, w, padding=1, partition="rows", workers=2), ref)


def test_numpy_in_numpy_out():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 20, 20)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    y = torch_conv(x, w, padding=1, partition="grid", workers=4)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    ref = torch_reference(torch.from_numpy(x), torch.from_numpy(w), None, padding=1)
    assert np.array_equal(y, ref.numpy())


@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"])
def test_nan_and_inf_propagate_as_single_node(mode):
    x = torch.randn(1, 2, 16, 16)
    x[0, 0, 7, 8] = float("nan")
    x[0, 1, 8, 3] = float("inf")
    x[0, 1, 0, 15] = float("-inf")
    w = torch.randn(3, 2, 3, 3)
    ref = torch_reference(x, w, None, padding=1, padding_mode=mode)
    assert torch.isnan(ref).any()
    y = torch_conv(x, w, padding=1, padding_mode=mode, partition="grid", workers=4)
    assert_bitwise(y, ref)


def test_every_worker_count_and_partition_on_one_layer():
    x = torch.randn(3, 4, 23, 19)
    w = torch.randn(6, 4, 3, 3)
    b = torch.randn(6)
    ref = torch_reference(x, w, b, padding=1, stride=2)
    for workers in range(1, 7):
        for part in ("batch", "rows", "cols", "grid", "channels", "auto"):
            y = torch_conv(x, w, b, padding=1, stride=2, partition=part, workers=workers)
            assert_bitwise(y, ref)


def test_matches_single_node_is_bitwise_but_where_this_machines_gemm_rounds_by_size():
    """kernels.matches_single_node: bit for bit; the one exception, float64 (im2col + GEMM)
    on a machine whose GEMM rounds by matrix size, allows GEMM_RTOL x max|y| — never more,
    and never for float32."""
    from haloconv.compute import kernels

    y32 = torch.linspace(-3, 3, 101, dtype=torch.float32)
    assert kernels.matches_single_node(y32, y32.clone())
    assert not kernels.matches_single_node(torch.nextafter(y32, y32 + 1), y32)
    gemm32 = kernels.matches_single_node(torch.nextafter(y32, y32 + 1), y32, gemm=True)
    assert gemm32 == (not kernels.GEMM_EXACT)  # float32 on GEMM: the same allowance, only when told
    assert not kernels.matches_single_node(y32 * (1 + 1e-4), y32, gemm=True)
    y64 = y32.double()
    assert kernels.matches_single_node(torch.nextafter(y64, y64 + 1), y64) == (not kernels.GEMM_EXACT)
    assert not kernels.matches_single_node(y64 * (1 + 1e-9), y64)
    nan = y64.clone()
    nan[3] = float("nan")
    assert not kernels.matches_single_node(nan, y64) and kernels.matches_single_node(nan, nan.clone())
    # the probe is right when it can be checked: a GEMM's first columns computed alone
    a = torch.randn(8, 27, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b = torch.randn(27, 1100, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if not torch.equal(a @ b[:, :500].contiguous(), (a @ b)[:, :500]):
        assert not kernels.GEMM_EXACT


def test_gemm_convs_warn_where_this_machines_gemm_rounds_by_size(monkeypatch):
    from haloconv.compute import kernels

    monkeypatch.setattr(kernels, "_warned_mkl", False)
    x = torch.randn(1, 2, 12, 12, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = torch_conv(x, w, padding=1, partition="rows", workers=2)
    assert_bitwise(y, torch_reference(x, w, padding=1))
    gemm = [c for c in caught if "GEMM" in str(c.message)]
    assert bool(gemm) == (not kernels.GEMM_EXACT or kernels.MKL_MODE == "unavailable")
