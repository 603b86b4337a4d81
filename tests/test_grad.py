"""A result with a grad_fn trains right on every engine: the gradients of x, weight and
bias equal torch.autograd's of the single-node call (up to the order of the sums where
windows overlap), and a path that cannot differentiate refuses instead of lying."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import haloconv
from test_conv_exact import _reference_or_none, _tensors, conv_case

# |g - g_ref| <= TOL x max(1, max|g_ref|): the tiles add their parts in another order
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
_MODULES = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}


def reference_grads(x, w, b, gy, case):
    """torch.autograd through the single-node torch.nn.ConvNd."""
    m = _MODULES[x.dim() - 2](
        x.shape[1], w.shape[0], tuple(w.shape[2:]), stride=case["stride"], padding=case["padding"],
        dilation=case["dilation"], groups=case["groups"], bias=b is not None, padding_mode=case["mode"],
        dtype=x.dtype)
    with torch.no_grad():
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)
    xr = x.clone().requires_grad_()
    (m(xr) * gy).sum().backward()
    return xr.grad, m.weight.grad, None if b is None else m.bias.grad


def haloconv_grads(x, w, b, gy, case, **kw):
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    bs = None if b is None else b.clone().requires_grad_()
    y = haloconv.conv(xs, ws, bs, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                      groups=case["groups"], padding_mode=case["mode"], **kw)
    assert y.grad_fn is not None
    (y * gy).sum().backward()
    return xs.grad, ws.grad, None if b is None else bs.grad


def assert_grads_close(got, want, dtype):
    for name, g, r in zip(("x", "weight", "bias"), got, want):
        if r is None:
            assert g is None
            continue
        assert g is not None and g.shape == r.shape, name
        scale = max(1.0, r.abs().max().item()) if r.numel() else 1.0
        err = (g - r).abs().max().item() if r.numel() else 0.0
        assert err <= TOL[dtype] * scale, f"{name}: max |diff| {err} (scale {scale})"


def _check(case, seed, **kw):
    """The gradients through haloconv equal torch.autograd's; a configuration torch rejects
    is no example (assume: hypothesis draws another, so every example checks gradients)."""
    x, w, b = _tensors(case, seed=seed)
    ref = _reference_or_none(x, w, b, case)
    if ref is None:
        assume(False)
    gy = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(seed + 1))
    part, workers = case["partition"], kw.pop("workers", case["workers"])
    if isinstance(part, tuple):
        extents = (x.shape[0], case["groups"] if case["groups"] > 1 else case["c_out"], *ref.shape[2:])
        part = tuple(min(c, e) for c, e in zip(part, extents))
        if math.prod(part) > workers:
            part = "grid"
    got = haloconv_grads(x, w, b, gy, case, partition=part, workers=workers, **kw)
    assert_grads_close(got, reference_grads(x, w, b, gy, case), x.dtype)
    return True


@settings(max_examples=60)
@given(conv_case())
def test_property_gradients_threads(case):
    _check(case, seed=3)


@pytest.fixture(scope="module")
def cluster(clusters):
    return clusters(3)


@settings(max_examples=25)
@given(conv_case())
def test_property_gradients_local_cluster(cluster, case):
    _check(case, seed=4, engine=cluster, workers=cluster.workers)


@pytest.mark.parametrize("partition", ["rows", "grid", "channels"])
def test_gradients_through_worker_processes(clusters, partition):
    """engine='processes' starts a cluster for the forward and one for the backward (grid);
    the other partitions on a held cluster."""
    case = dict(n=2, c_in=3, c_out=4, groups=1, kernel=(3, 3), dilation=(1, 2), mode="reflect", padding=2,
                stride=(2, 1), spatial=(21, 17), dtype=torch.float64, bias=True, workers=2, partition=partition)
    assert _check(case, seed=5, engine="processes" if partition == "grid" else clusters(2))


def test_issue_case_rows_on_processes_engine():
    """The reported case: 33 of 64 rows of x.grad were wrong, only tile 0's part flowed back."""
    case = dict(n=1, c_in=3, c_out=4, groups=1, kernel=(3, 3), dilation=(1, 1), mode="zeros", padding=1,
                stride=(1, 1), spatial=(64, 64), dtype=torch.float32, bias=True, workers=2, partition="rows")
    assert _check(case, seed=6, engine="processes")


@pytest.mark.parametrize("backend", ["ndimage", "fft"])
def test_gradients_of_other_backends_are_the_convolutions(backend):
    """The forward computed by ndimage or FFT; the backward is the convolution's own."""
    case = dict(n=1, c_in=2, c_out=2, groups=2, kernel=(5, 5), dilation=(1, 1), mode="zeros", padding=2,
                stride=(1, 1), spatial=(30, 26), dtype=torch.float64, bias=False, workers=3, partition="rows")
    assert _check(case, seed=7, backend=backend)


def test_no_grad_fn_without_grad_and_under_no_grad():
    x, w = torch.randn(1, 1, 12, 12), torch.randn(1, 1, 3, 3, requires_grad=True)
    assert haloconv.conv(x, w.detach(), partition="rows", workers=2).grad_fn is None
    with torch.no_grad():
        assert haloconv.conv(x, w, partition="rows", workers=2).grad_fn is None


def test_distributed_face_refuses_inputs_that_require_grad():
    """haloconv.distributed.conv is forward-only; training goes through haloconv.nn."""
    import haloconv.distributed as d

    p = haloconv.plan((1, 1, 8, 8), (1, 1, 3, 3), partition="rows", workers=1)
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    with pytest.raises(ValueError, match="haloconv.nn"):
        d.conv(x, torch.randn(1, 1, 3, 3), plan=p)


@settings(max_examples=10)
@given(st.sampled_from(["rows", "cols", "grid"]), st.integers(2, 4))
def test_empty_owned_tiles_differentiate_too(partition, workers):
    """Tiles owning no input on an axis (more tiles than input rows)."""
    case = dict(n=1, c_in=2, c_out=1, groups=1, kernel=(2, 3), dilation=(3, 1), mode="replicate",
                padding=(3, 1), stride=(3, 1), spatial=(3, 8), dtype=torch.float64, bias=False,
                workers=workers, partition=partition)
    assert _check(case, seed=8)


@pytest.mark.parametrize("how", ["master exchange", "dynamic schedule"])
def test_gradients_through_a_master_exchange_and_a_dynamic_schedule(clusters, how):
    """The forwards the README lists beside the default one train too: windows sent whole by
    the master (a held cluster), and tiles pulled by whichever process is free (a pool for
    the call); the backward equals torch.autograd's."""
    case = dict(n=2, c_in=3, c_out=4, groups=1, kernel=(3, 3), dilation=(1, 2), mode="reflect", padding=2,
                stride=(1, 1), spatial=(23, 19), dtype=torch.float64, bias=True, workers=3, partition="rows")
    kw = (dict(engine=clusters(3), workers=3, partition="rows", exchange="master", pipeline=2)
          if how == "master exchange" else
          dict(engine="processes", workers=2, partition="rows", schedule="dynamic", tiles=6))
    x, w, b = _tensors(case, seed=9)
    ref = _reference_or_none(x, w, b, case)
    gy = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(10))
    got = haloconv_grads(x, w, b, gy, case, **kw)
    assert_grads_close(got, reference_grads(x, w, b, gy, case), x.dtype)
