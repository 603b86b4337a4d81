"""Compute backends: ndimage split runs are bitwise ndimage on the whole input, FFT runs are
within the fft backend's tolerance of torch; both close to torch; refused where they do not apply."""

import collections

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import haloconv
from conftest import count_opencv_paths
from haloconv.compute import backends
from haloconv.compute.backends import fft, opencv
from haloconv.costmodel.cost import Profile
from haloconv.tiling.spec import ConvSpec

# OpenCV's own border for each padding mode it has (circular: filter2D has no BORDER_WRAP)
CV2_BORDERS = {"zeros": "BORDER_CONSTANT", "reflect": "BORDER_REFLECT_101", "replicate": "BORDER_REPLICATE"}


@st.composite
def filter_case(draw, dims=(1, 2, 2, 3), max_2d=30):
    nd = draw(st.sampled_from(dims))
    max_len = {1: 60, 2: max_2d, 3: 10}[nd]
    c = draw(st.sampled_from((1, 1, 2, 3)))
    kernel = tuple(draw(st.integers(1, 6)) for _ in range(nd))
    dilation = tuple(draw(st.sampled_from((1, 1, 2))) for _ in range(nd))
    mode = draw(st.sampled_from(("zeros", "zeros", "reflect", "replicate", "circular")))
    padding = draw(st.one_of(st.just("same"), st.integers(0, 3)))
    spatial = tuple(draw(st.integers(8, max_len)) for _ in range(nd))
    return dict(x=(draw(st.integers(1, 2)), c, *spatial), w=(c, 1, *kernel), groups=c, dilation=dilation,
                padding=padding, padding_mode=mode, dtype=draw(st.sampled_from((torch.float32, torch.float64))),
                workers=draw(st.integers(1, 5)), partition=draw(st.sampled_from(("rows", "cols", "grid", "batch"))))


def _run(case, backend, **extra):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case["x"], generator=g, dtype=case["dtype"])
    w = torch.randn(case["w"], generator=g, dtype=case["dtype"])
    kw = dict(padding=case["padding"], dilation=case["dilation"], groups=case["groups"],
              padding_mode=case["padding_mode"])
    try:
        spec = ConvSpec.from_args(x.shape, w.shape, None, **kw)
        ref_torch = backends.single_node("torch", x, w, None, spec)
    except (ValueError, RuntimeError):
        return None
    part = case["partition"]
    if len(case["x"]) == 3 and part in ("rows", "grid"):
        part = "cols"
    y = haloconv.conv(x, w, partition=part, workers=case["workers"], backend=backend, **kw, **extra)
    return x, w, spec, y, ref_torch


@given(filter_case())
def test_property_ndimage_split_is_bitwise_whole_ndimage(case):
    out = _run(case, "ndimage")
    if out is None:
        return
    x, w, spec, y, ref_torch = out
    assert torch.equal(y, backends.single_node("ndimage", x, w, None, spec))
    torch.testing.assert_close(y, ref_torch, rtol=1e-5 if x.dtype == torch.float32 else 1e-12,
                               atol=1e-5 if x.dtype == torch.float32 else 1e-12)


@given(filter_case(), st.booleans())
def test_property_fft_within_tolerance_of_torch(case, dense):
    if dense:  # FFT also takes dense layers, groups and strides
        case = dict(case, w=(4, case["x"][1], *case["w"][2:]), groups=1)
    out = _run(case, "fft")
    if out is None:
        return
    x, w, spec, y, ref_torch = out
    tol = fft.BACKEND.tolerance[x.dtype] * ref_torch.abs().max().item()
    assert (y - ref_torch).abs().max().item() <= tol


_CENTRED = dict(x=(1, 2, 41, 37), w=(2, 1, 5, 3), groups=2, dilation=(1, 1), padding="same")


def test_property_opencv_split_is_bitwise_whole_opencv_where_it_filters_directly(monkeypatch):
    """Below opencv.DIRECT_TAPS taps a split run equals the same procedure on the whole image
    bit for bit (every padding, mode, dilation); above, OpenCV may transform
    (within its tolerance of torch).  Both kinds of case are reached, and planes filtered in
    one call on the plane itself (opencv.direct) as well as from padded copies."""
    kinds: collections.Counter = collections.Counter()
    count_opencv_paths(monkeypatch, kinds)

    @settings(max_examples=80, deadline=None)
    @given(filter_case(dims=(2,), max_2d=200), st.sampled_from(("rows", "cols", "grid")), st.integers(2, 5))
    # one case per border cv2.filter2D has (a draw reaches one in about 90: centred, odd, undilated)
    @example(_CENTRED | dict(padding_mode="zeros", dtype=torch.float32), "grid", 4)
    @example(_CENTRED | dict(padding_mode="reflect", dtype=torch.float32), "rows", 3)
    @example(_CENTRED | dict(padding_mode="replicate", dtype=torch.float64), "cols", 2)
    def check(case, partition, workers):
        case = dict(case, partition=partition, workers=workers)  # every example split in space
        out = _run(case, "opencv")
        if out is None:
            assume(False)  # torch refuses it: no example
        x, w, spec, y, ref_torch = out
        if opencv.BACKEND.exact_for(spec):
            kinds["direct"] += 1
            assert torch.equal(y, backends.single_node("opencv", x, w, None, spec))
        else:
            kinds["transform"] += 1
        tol = opencv.BACKEND.tolerance[x.dtype] * ref_torch.abs().max().item()
        assert (y - ref_torch).abs().max().item() <= tol
        kinds["checked"] += 1
        _compare_with_cv2(x, w, case, y, kinds)

    check()
    assert kinds["checked"] >= 72 and kinds["direct"] >= 20 and kinds["one call"] >= 20, kinds
    # the transform side is reached too (fixed cases of it: test_opencv_large_kernels_...)
    assert kinds["transform"] >= 1 and kinds["cv2 zeros"] and kinds["cv2 reflect"], kinds


@pytest.mark.parametrize("mode", sorted(CV2_BORDERS))
@pytest.mark.parametrize("partition", ["rows", "cols", "grid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opencv_split_against_cv2_filter2d_with_its_own_border(mode, partition, dtype):
    """Fixed cases of every mode filter2D has, split three ways, against cv2 itself."""
    kinds: collections.Counter = collections.Counter()
    for i, (k, side) in enumerate((((3, 3), (61, 47)), ((5, 3), (40, 131)), ((1, 7), (23, 70)))):
        case = dict(x=(2, 2, *side), w=(2, 1, *k), groups=2, dilation=(1, 1), padding="same", padding_mode=mode,
                    dtype=dtype, workers=3 + i, partition=partition)
        x, w, spec, y, _ = _run(case, "opencv")
        _compare_with_cv2(x, w, case, y, kinds)
    assert kinds[f"cv2 {mode}"] == 3


def _compare_with_cv2(x, w, case, y, kinds) -> None:
    """A split run against cv2.filter2D itself on each whole plane, where filter2D computes
    the same thing (an odd kernel, no dilation, 'same'): zero padding bit for bit (the
    backends are OpenCV's own call there, compute/backends/opencv.py); reflect and
    replicate, which the backends compute from padded copies, within 4 ulp of max|y| in
    float32 and bit for bit in float64 (measured: float32 differs by 1-4 ulp in 21 of 72
    such cases)."""
    import cv2

    k = case["w"][2:]
    centred = case["padding"] == "same" or (k[0] == k[1] and case["padding"] == k[0] // 2)
    if not centred or any(d != 1 for d in case["dilation"]) or any(v % 2 == 0 for v in k) or \
            case["padding_mode"] not in CV2_BORDERS:
        return
    border = getattr(cv2, CV2_BORDERS[case["padding_mode"]])
    xs, ws, ys = x.numpy(), w.numpy(), y.numpy()
    for n in range(xs.shape[0]):
        for c in range(xs.shape[1]):
            ref = cv2.filter2D(xs[n, c], -1, ws[c, 0], borderType=border)
            if case["padding_mode"] == "zeros" or xs.dtype == np.float64:
                assert np.array_equal(ys[n, c], ref), (case, np.abs(ys[n, c] - ref).max())
            else:
                assert np.abs(ys[n, c] - ref).max() <= 4 * np.finfo(np.float32).eps * max(1.0, np.abs(ref).max())
    kinds[f"cv2 {case['padding_mode']}"] += 1


@pytest.mark.parametrize("kernel,dilation,partition", [((9, 9), (1, 1), "grid"), ((7, 11), (2, 1), "rows"),
                                                       ((15, 5), (1, 2), "cols")])
def test_opencv_large_kernels_split_within_tolerance_of_torch(kernel, dilation, partition):
    """Kernels of 50 taps and more, where OpenCV may filter through a DFT: fixed cases (a
    property run reaches them a few times in 80), split, within the backend's tolerance of torch."""
    case = dict(x=(1, 2, 97, 83), w=(2, 1, *kernel), groups=2, dilation=dilation, padding="same",
                padding_mode="reflect", dtype=torch.float32, workers=4, partition=partition)
    x, w, spec, y, ref_torch = _run(case, "opencv")
    assert not opencv.BACKEND.exact_for(spec)  # the transform's side of the backend
    tol = opencv.BACKEND.tolerance[x.dtype] * ref_torch.abs().max().item()
    assert (y - ref_torch).abs().max().item() <= tol


def test_property_opencv_split_is_bitwise_opencv_own_call_on_the_whole_image():
    """An odd kernel padded 'same' with zeros: a split run, and single_node, equal OpenCV's
    own call on the whole image (filter2D, or sepFilter2D with the kernel's factors) bit for
    bit, the image's last columns included, which OpenCV computes outside its SIMD body.
    Reached: tiles that end the image's rows from a column opencv.ALIGN divides (their call is
    the image's own there: every tile of a split by rows), from one it does not (split by
    columns or tiles, the last ones again from a call aligned as the image's), and images
    narrower than opencv.TAIL (every column among the image's last)."""
    import cv2
    import numpy as np

    from haloconv.compute.backends import separable

    reached: collections.Counter = collections.Counter()

    @settings(max_examples=60, deadline=None)
    @given(st.sampled_from((np.float32, np.float64)), st.sampled_from((1, 3, 5, 7)), st.sampled_from((1, 3, 5, 7)),
           st.integers(5, 90), st.integers(5, 300), st.booleans(), st.booleans(),
           st.sampled_from((("rows", 3), ("cols", 2), ("cols", 3), ("cols", 5), ("grid", 4))), st.integers(0, 2**16))
    def check(dtype, kh, kw, height, width, rank1, symmetric, split, seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((1, 1, height, width)).astype(dtype)
        ky, kx, w = rng.standard_normal(kh), rng.standard_normal(kw), rng.standard_normal((kh, kw))
        if symmetric:  # OpenCV sums a symmetric kernel in pairs
            ky, kx, w = ky + ky[::-1], kx + kx[::-1], w + w[::-1, ::-1]
        w = (np.outer(ky, kx) if rank1 else w).astype(dtype)[None, None]
        if rank1:
            fx, fy = separable.factors(w[0, 0])
            whole = cv2.sepFilter2D(x[0, 0], -1, fx, fy, borderType=cv2.BORDER_CONSTANT)
        else:
            whole = cv2.filter2D(x[0, 0], -1, w[0, 0], borderType=cv2.BORDER_CONSTANT)
        name = "separable" if rank1 else "opencv"
        spec = ConvSpec.from_args(x.shape, w.shape, None, padding="same")
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        assert np.array_equal(backends.single_node(name, xt, wt, None, spec)[0, 0].numpy(), whole)
        plan = haloconv.plan(x.shape, wt, padding="same", partition=split[0], workers=split[1], backend=name)
        for t in plan.tiles:  # counted from the plan, apart from the code under test
            if t.out.hi[3] == width:
                reached["aligned end" if t.out.lo[3] % opencv.ALIGN == 0 else "end elsewhere"] += 1
        reached["narrow"] += width < opencv.TAIL
        y = haloconv.conv(xt, wt, padding="same", partition=split[0], workers=split[1], backend=name)
        assert np.array_equal(y[0, 0].numpy(), whole)

    check()
    assert min(reached["aligned end"], reached["end elsewhere"], reached["narrow"]) >= 5, reached


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opencv_on_worker_processes_strided_depthwise_and_wide(clusters, dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 203, 517, generator=g, dtype=dtype)
    for k, stride in ((3, 1), (5, 2), (15, 1)):  # 15x15: past DIRECT_TAPS
        w = torch.randn(3, 1, k, k, generator=g, dtype=dtype)
        spec = ConvSpec.from_args(x.shape, w.shape, None, padding=k // 2, stride=stride, groups=3)
        y = haloconv.conv(x, w, padding=k // 2, stride=stride, groups=3, partition="grid", workers=4,
                          engine=clusters(4), backend="opencv")
        if opencv.BACKEND.exact_for(spec):
            assert torch.equal(y, backends.single_node("opencv", x, w, None, spec))
        ref = torch.nn.functional.conv2d(x, w, padding=k // 2, stride=stride, groups=3)
        assert (y - ref).abs().max() <= opencv.BACKEND.tolerance[dtype] * ref.abs().max()


def test_fft_strided_grouped_and_processes_engine(clusters):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 41, 37, generator=g)
    w = torch.randn(6, 2, 5, 5, generator=g)
    b = torch.randn(6, generator=g)
    ref = torch.nn.functional.conv2d(x, w, b, stride=2, padding=2, groups=2)
    y = haloconv.conv(x, w, b, stride=2, padding=2, groups=2, partition="grid", workers=3, backend="fft",
                      engine=clusters(3))
    assert (y - ref).abs().max() <= fft.BACKEND.tolerance[torch.float32] * ref.abs().max()


def test_backends_refused_where_they_do_not_apply():
    x, w = torch.randn(1, 3, 20, 20), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="backend='ndimage' computes single-channel filters only"):
        haloconv.conv(x, w, backend="ndimage", workers=2, partition="rows")
    with pytest.raises(ValueError, match="backend='ndimage' needs stride 1"):
        haloconv.conv(torch.randn(1, 1, 20, 20), torch.randn(1, 1, 3, 3), stride=2, backend="ndimage")
    with pytest.raises(ValueError, match="backend must be one of"):
        haloconv.conv(x, w, backend="winograd")


def test_auto_backend_picks_fft_for_large_kernels_and_torch_for_small():
    from haloconv.costmodel.cost import Profile

    prof = Profile()  # the documented defaults: no calibration needed
    big = haloconv.plan((1, 1, 1024, 1024), (1, 1, 31, 31), padding=15, workers=2, partition="rows",
                        backend="auto", profile=prof)
    small = haloconv.plan((1, 16, 256, 256), (16, 16, 3, 3), padding=1, workers=2, partition="rows",
                          backend="auto", profile=prof)
    assert big.backend == "fft" and small.backend == "torch"


def test_fft_in_blocks_of_rows(monkeypatch):
    """Tiles larger than a block go through the overlap-add loop (several blocks, a last short one)."""
    monkeypatch.setattr(fft, "FFT_BLOCK_ELEMENTS", 200)  # one setting: compute and model read it
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 97, 23, generator=g, dtype=torch.float64)
    w = torch.randn(3, 2, 5, 4, generator=g, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(x, w, padding=(2, 1), dilation=(2, 1))
    y = haloconv.conv(x, w, padding=(2, 1), dilation=(2, 1), partition="cols", workers=2, backend="fft")
    assert (y - ref).abs().max() <= fft.BACKEND.tolerance[torch.float64] * ref.abs().max()


def test_default_backend_is_the_fastest_for_filters_and_torch_for_layers_and_training():
    prof = Profile()  # the documented defaults: no calibration needed
    filt = haloconv.plan((1, 1, 512, 512), (1, 1, 3, 3), padding=1, workers=2, partition="rows", profile=prof)
    depthwise = haloconv.plan((1, 8, 256, 256), (8, 1, 5, 5), padding=2, groups=8, workers=2, partition="rows",
                              profile=prof)
    layer = haloconv.plan((1, 8, 256, 256), (8, 8, 3, 3), padding=1, workers=2, partition="rows", profile=prof)
    assert filt.backend == depthwise.backend == "opencv" and layer.backend == "torch"
    x, w = torch.randn(1, 1, 40, 40), torch.randn(1, 1, 3, 3)
    y = haloconv.conv(x, w, padding=1, workers=2, partition="rows", profile=prof)
    spec = ConvSpec.from_args(x.shape, w.shape, None, padding=1)
    assert torch.equal(y, backends.single_node("opencv", x, w, None, spec))
    xg = x.clone().requires_grad_()
    yg = haloconv.conv(xg, w, padding=1, workers=2, partition="rows", profile=prof)  # training: torch
    assert torch.equal(yg.detach(), backends.single_node("torch", x, w, None, spec))
