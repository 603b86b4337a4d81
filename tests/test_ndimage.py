"""haloconv.ndimage: scipy.ndimage's correlate, convolve, correlate1d and convolve1d, split
across workers, bit for bit scipy's own call on the whole input (backend 'ndimage')."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as sndi
from hypothesis import given, settings
from hypothesis import strategies as st

import haloconv
from haloconv import ndimage as ndi

SCIPY_MODES = ["reflect", "mirror", "nearest", "wrap", "constant", "grid-mirror", "grid-wrap", "grid-constant"]
DTYPES = [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]
reached: dict[str, int] = {}


def _count(key: str) -> None:
    reached[key] = reached.get(key, 0) + 1


@settings(max_examples=120)
@given(
    shape=st.tuples(st.integers(1, 14), st.integers(1, 14)),
    kernel=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    mode=st.sampled_from(SCIPY_MODES),
    dtype=st.sampled_from(DTYPES),
    out=st.sampled_from([None, np.float64, np.uint8]),
    convolution=st.booleans(),
    split=st.sampled_from([("rows", 2), ("rows", 3), ("cols", 2), ("grid", 4)]),
    data=st.data(),
)
def test_correlate_and_convolve_are_scipys_bit_for_bit(shape, kernel, mode, dtype, out, convolution, split, data):
    origin = tuple(data.draw(st.integers(-(k // 2), (k - 1) // 2)) for k in kernel)
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    img = (rng.random(shape) * 100 - (0 if np.dtype(dtype).kind == "u" else 50)).astype(dtype)
    k = rng.random(kernel) - 0.4
    cval = float(rng.integers(-3, 4))
    ours, theirs = (ndi.convolve, sndi.convolve) if convolution else (ndi.correlate, sndi.correlate)
    part, workers = split
    y = ours(img, k, output=out, mode=mode, cval=cval, origin=origin, partition=part, workers=workers)
    ref = theirs(img, k, output=out, mode=mode, cval=cval, origin=origin)
    assert y.dtype == ref.dtype and np.array_equal(y, ref)
    _count(mode)
    _count(np.dtype(dtype).name)
    if any(o != 0 for o in origin):
        _count("origin")
    if any(m > n for m, n in zip(kernel, shape)):
        _count("kernel longer than the input")


def test_the_property_reaches_every_mode_dtype_origin_and_long_kernels():
    reached.clear()
    test_correlate_and_convolve_are_scipys_bit_for_bit()
    assert all(reached.get(m, 0) >= 4 for m in SCIPY_MODES), reached
    assert all(reached.get(np.dtype(d).name, 0) >= 4 for d in DTYPES), reached
    assert reached["origin"] >= 30 and reached["kernel longer than the input"] >= 10, reached


@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "wrap", "constant"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_correlate1d_and_convolve1d_are_scipys_bit_for_bit(mode, dtype):
    """correlate1d adds a symmetric kernel's taps in pairs: tiles computed by scipy's
    correlate1d (backend ndimage1d) are its result, not correlate's."""
    rng = np.random.default_rng(1)
    x = (rng.random((37, 29)) * 200).astype(dtype)
    sym = np.array([0.1, 0.25, 0.3, 0.25, 0.1])
    for axis, part in ((0, "rows"), (1, "cols"), (-1, "grid")):
        y = ndi.correlate1d(x, sym, axis=axis, mode=mode, cval=1.5, workers=3 if part != "grid" else 4, partition=part)
        assert np.array_equal(y, sndi.correlate1d(x, sym, axis=axis, mode=mode, cval=1.5))
        y = ndi.convolve1d(x, [1, -2, 4, 3], axis=axis, origin=1, mode=mode, workers=2, partition=part)
        assert np.array_equal(y, sndi.convolve1d(x, [1, -2, 4, 3], axis=axis, origin=1, mode=mode))


def test_kernels_longer_than_the_input_under_every_mode():
    assert ndi.convolve1d(np.ones(1), np.ones(5), mode="mirror")[0] == 5.0  # scipy gives 5 (the case)
    x = np.random.default_rng(2).random(7)
    for mode in ["reflect", "mirror", "wrap", "nearest", "constant"]:
        y = ndi.correlate1d(x, np.arange(23.0), mode=mode, cval=2, workers=2, partition="cols")
        assert np.array_equal(y, sndi.correlate1d(x, np.arange(23.0), mode=mode, cval=2)), mode


def test_an_rgb_photo_filtered_per_channel_in_one_line():
    """A 2-D kernel on the (H, W) axes of an (H, W, C) image: each channel filtered, uint8 kept."""
    rgb = (np.random.default_rng(3).random((50, 40, 3)) * 255).astype(np.uint8)
    box = np.ones((5, 5)) / 25
    y = ndi.correlate(rgb, box, axes=(0, 1), workers=4, partition="grid")
    assert y.dtype == np.uint8 and np.array_equal(y, sndi.correlate(rgb, box, axes=(0, 1)))
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    assert np.array_equal(ndi.correlate(chw, box, axes=(1, 2), workers=2), sndi.correlate(chw, box, axes=(1, 2)))


def test_complex_inputs_and_weights_volumes_and_given_outputs():
    rng = np.random.default_rng(4)
    z = rng.random((20, 21)) + 1j * rng.random((20, 21))
    kz = rng.random((3, 4)) + 1j * rng.random((3, 4))
    for ours, theirs in ((ndi.correlate, sndi.correlate), (ndi.convolve, sndi.convolve)):
        for a, b in ((z, kz), (z, kz.real), (z.real, kz)):
            assert np.array_equal(ours(a, b, workers=2, partition="rows"), theirs(a, b))
    assert np.array_equal(ndi.correlate1d(z, [1 + 1j, 2, 3j], workers=2, partition="rows"),
                          sndi.correlate1d(z, [1 + 1j, 2, 3j]))
    v = rng.random((10, 12, 9))
    k3 = rng.random((3, 2, 3))
    assert np.array_equal(ndi.correlate(v, k3, mode="wrap", workers=4, partition="grid"),
                          sndi.correlate(v, k3, mode="wrap"))
    img = rng.random((30, 31)).astype(np.float32)
    o = np.empty_like(img)
    assert ndi.correlate(img, np.ones((3, 3)), output=o, workers=2) is o
    assert np.array_equal(o, sndi.correlate(img, np.ones((3, 3))))
    # more filtered axes than a plan splits: scipy on the whole input (said in the docstring)
    h = rng.random((3, 4, 5, 6))
    assert np.array_equal(ndi.correlate(h, np.ones((2, 2, 2, 2))), sndi.correlate(h, np.ones((2, 2, 2, 2))))


def test_the_split_is_real():
    """The filters above are split: the plan a call makes has the tiles asked for."""
    from haloconv.engines.inprocess import arrays as array_threads

    seen = []
    real = array_threads.run

    def spy(plan, *a, **kw):
        seen.append(len(plan.tiles))
        return real(plan, *a, **kw)

    array_threads.run = spy
    try:
        ndi.correlate(np.zeros((40, 40)), np.ones((3, 3)), workers=4, partition="grid")
        ndi.correlate1d(np.zeros((40, 40)), np.ones(3), workers=3, partition="rows")
    finally:
        array_threads.run = real
    assert seen == [4, 3]


def test_bad_arguments_fail_as_scipy_fails():
    x = np.zeros((8, 8))
    for call in (ndi.correlate, sndi.correlate):
        with pytest.raises(ValueError, match="origin"):
            call(x, np.ones((3, 3)), origin=2)
        with pytest.raises(RuntimeError, match="boundary mode not supported"):
            call(x, np.ones((3, 3)), mode="bogus")
        with pytest.raises(RuntimeError, match="must match"):
            call(x, np.ones(3))
    with pytest.raises(RuntimeError, match="no filter weights"):
        ndi.correlate1d(x, [])
    with pytest.raises(ValueError, match="complex-valued cval"):
        ndi.correlate(x, np.ones((3, 3)) * 1j, mode="constant", cval=1j)
    assert haloconv.ndimage is ndi


@pytest.mark.parametrize("backend", ["torch", "fft", "ndimage", "opencv"])
def test_reversed_arrays_are_taken_by_haloconv_conv_on_every_backend(backend):
    """``x[..., ::-1]`` and ``k[..., ::-1, ::-1]`` (negative strides, which torch.from_numpy
    refuses) are taken as their values, by every backend."""
    rng = np.random.default_rng(6)
    x = rng.random((1, 1, 30, 20)).astype(np.float32)
    k = rng.random((1, 1, 3, 5)).astype(np.float32)
    for xx, kk in ((x[..., ::-1], k), (x, k[..., ::-1, ::-1]), (x[:, :, ::-1], k[..., ::-1])):
        y = haloconv.conv(xx, kk, padding=(1, 2), workers=2, partition="rows", backend=backend)
        ref = haloconv.conv(np.ascontiguousarray(xx), np.ascontiguousarray(kk), padding=(1, 2), workers=2,
                            partition="rows", backend=backend)
        assert np.array_equal(y, ref)


def test_worker_processes_give_scipys_bits_for_every_dtype_and_mode():
    """engine='processes' (a pool for the call) and a held LocalCluster: the image travels as
    float64, the result is converted as scipy converts its sums; bit for bit scipy's, split,
    for integer and float images (the peers' suites run a subset there too)."""
    from haloconv.engines.processes import local as processes

    started = []
    real = processes.run

    def spy(plan, *a, **kw):
        started.append(len(plan.tiles))
        return real(plan, *a, **kw)

    rng = np.random.default_rng(3)
    k = rng.random((5, 3))
    processes.run = spy
    try:
        for dtype in (np.uint8, np.uint16, np.int32, np.float32, np.float64):
            x = (rng.random((37, 29)) * 200).astype(dtype)
            for mode in ("reflect", "mirror", "wrap", "nearest", "constant"):
                y = ndi.correlate(x, k, mode=mode, cval=3.5, engine="processes", workers=3, partition="grid")
                ref = sndi.correlate(x, k, mode=mode, cval=3.5)
                assert y.dtype == ref.dtype and np.array_equal(y, ref), (dtype, mode)
    finally:
        processes.run = real
    assert started == [3] * 25
    with haloconv.LocalCluster(2) as cluster:
        rgb = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
        assert np.array_equal(ndi.gaussian_filter(rgb, (2, 2, 0), engine=cluster, workers=2),
                              sndi.gaussian_filter(rgb, (2, 2, 0)))
    with pytest.raises(ValueError, match="engine must be"):
        ndi.correlate(np.zeros((8, 8)), np.ones((3, 3)), engine="gpu")


@pytest.mark.parametrize("backend", ["opencv", "auto"])
def test_the_fast_backends_take_every_mode_within_float32_of_scipy(backend):
    """backend='opencv' / 'auto' (the cost model's pick): every mode's halo read by haloconv,
    tiles filtered in float32 (float64 for float64 images), the result converted as scipy
    converts: within float32 rounding of scipy's float64 sums; integers truncated, so at most
    one unit off where a float32 sum lands just below an integer."""
    rng = np.random.default_rng(4)
    k = rng.random((5, 3))
    for dtype in (np.uint8, np.uint16, np.float32, np.float64):
        x = (rng.random((61, 47)) * 200).astype(dtype)
        for mode in ("reflect", "mirror", "wrap", "nearest", "constant"):
            y = ndi.correlate(x, k, mode=mode, cval=2.0, backend=backend, workers=3, partition="grid")
            ref = sndi.correlate(x, k, mode=mode, cval=2.0)
            diff = np.abs(y.astype(np.float64) - ref)
            assert y.dtype == ref.dtype, (dtype, mode)
            if dtype == np.float64:
                assert diff.max() <= 1e-12 * np.abs(ref).max(), (dtype, mode)
            elif dtype == np.float32:
                assert diff.max() <= 8 * np.finfo(np.float32).eps * np.abs(ref).max(), (dtype, mode)
            else:
                assert diff.max() <= 1 and (diff == 0).mean() > 0.9, (dtype, mode)
    # a 2-D Gaussian is one separable call on these backends, within float32 of scipy's two passes
    y = ndi.gaussian_filter(x.astype(np.float32), 2, backend=backend, workers=2)
    assert np.abs(y - sndi.gaussian_filter(x.astype(np.float32), 2)).max() <= 1e-4 * 200
    if backend == "auto":  # a volume: the cost model may pick a backend that takes no arrays (fft)
        v = rng.random((12, 20, 16)).astype(np.float32)
        assert np.abs(ndi.correlate(v, np.ones((5, 5, 5)), backend=backend, workers=2)
                      - sndi.correlate(v, np.ones((5, 5, 5)))).max() <= 1e-5
        assert np.abs(ndi.gaussian_filter(v, (1, 2, 1.5), backend=backend, workers=2)
                      - sndi.gaussian_filter(v, (1, 2, 1.5))).max() <= 1e-6


NATIVE_REACHED = {"separable": 0, "dense": 0, "stack": 0, "one band": 0}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64]),
       st.sampled_from([("reflect", "BORDER_REFLECT"), ("mirror", "BORDER_REFLECT_101"),
                        ("nearest", "BORDER_REPLICATE"), ("constant", "BORDER_CONSTANT")]),
       st.integers(3, 90), st.integers(3, 70), st.integers(1, 9), st.integers(1, 7), st.booleans(),
       st.integers(1, 5), st.integers(1, 3), st.data())
def test_opencv_on_an_image_in_its_dtype_is_opencvs_own_call_bit_for_bit(dtype, mode, h, w, kh, kw, rank1, workers,
                                                                        channels, data):
    """backend 'opencv' / 'auto' on 2-D planes of an OpenCV dtype, with a mode that is an
    OpenCV border, split in row bands: bit for bit cv2.sepFilter2D (rank-1 kernels) or
    cv2.filter2D on the whole image with that border, in the image's dtype — compared with
    OpenCV called here, plane by plane; the row bands and a stack of planes reached."""
    import cv2

    from haloconv.compute.backends.separable import factors
    from haloconv.ndimage import native

    kh, kw = min(kh, 2 * h - 1), min(kw, 2 * w - 1)  # reaching less than the image's side
    if kh // 2 >= h or kw // 2 >= w:
        return
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    kernel = np.outer(rng.random(kh) - 0.3, rng.random(kw)) if rank1 else rng.random((kh, kw)) - 0.3
    if not rank1 and kh * kw >= native.DIRECT_TAPS:
        return
    x = (rng.random((h, w, channels)) * 250).astype(dtype)
    backend = data.draw(st.sampled_from(["opencv", "auto"]))
    y = ndi.correlate(x, kernel, mode=mode[0], backend=backend, workers=workers, axes=(0, 1))
    kk = kernel.astype(np.float64 if dtype == np.float64 else np.float32)
    pair = factors(kk)
    border = getattr(cv2, mode[1])
    for c in range(channels):
        plane = np.ascontiguousarray(x[:, :, c])
        ref = (cv2.filter2D(plane, -1, kk, borderType=border) if pair is None
               else cv2.sepFilter2D(plane, -1, pair[0], pair[1], borderType=border))
        assert y.dtype == x.dtype and np.array_equal(y[:, :, c], ref), (c, dtype, mode, kernel.shape, workers)
    NATIVE_REACHED["separable" if pair is not None else "dense"] += 1
    NATIVE_REACHED["stack"] += channels > 1
    NATIVE_REACHED["one band"] += h < 2 * 2 * kh or workers == 1


def test_opencv_in_the_images_dtype_reached_its_cases_and_leaves_the_rest_to_the_float_path(monkeypatch):
    """The property above reached every case; a call this path does not compute (a mode that
    is no OpenCV border, an origin, a grid, float16, a kernel past the image, worker
    processes) goes the float32 way, as scipy converts (truncated), not through it."""
    assert all(v >= 3 for v in NATIVE_REACHED.values()), NATIVE_REACHED
    from haloconv.ndimage import native

    calls = []
    real = native.correlate
    monkeypatch.setattr(native, "correlate", lambda *a: calls.append(1) or real(*a))
    x = (np.random.default_rng(8).random((40, 30)) * 200).astype(np.uint8)
    k = np.ones((3, 3)) / 9
    ndi.correlate(x, k, backend="opencv", workers=2)
    assert calls == [1]
    for kw in (dict(mode="wrap"), dict(origin=1), dict(mode="constant", cval=3.0), {}):
        split = dict(partition="grid") if not kw else {}
        y = ndi.correlate(x, k, backend="opencv", workers=2, **kw, **split)
        assert calls == [1] and np.abs(y.astype(int) - sndi.correlate(x, k, **kw)).max() <= 1, kw
    ndi.correlate(x.astype(np.float16), k, backend="opencv", workers=2)
    ndi.correlate(x[:2], np.ones((5, 3)), backend="opencv", workers=2)  # the kernel reaches past 2 rows
    assert calls == [1]


def test_opencv_keeps_the_callers_thread_count():
    """OpenCV's thread count is one setting per process: the OpenCV backends set it per tile
    and give the caller's back, so a cv2 call of the caller's after ours runs as it would."""
    import cv2

    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(3)
        x = np.random.default_rng(9).random((300, 200)).astype(np.float32)
        ndi.gaussian_filter(x, 2, backend="opencv", workers=2)
        assert cv2.getNumThreads() == 3
        haloconv.conv(x[None, None], np.ones((1, 1, 3, 3), np.float32), workers=2, partition="rows",
                      backend="opencv")
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)
