"""haloconv.ndimage's linear filters, built from correlate1d passes as scipy builds them:
bit for bit scipy's on the whole input, split (the uniform filters: exact on integer
inputs, within float64 rounding of scipy's running sum on float ones)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as sndi

from haloconv import ndimage as ndi

SPLIT = dict(workers=4, partition="grid")
MODES = ["reflect", "mirror", "nearest", "wrap", "constant"]


def _image(dtype, shape=(45, 38), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 200 - (0 if np.dtype(dtype).kind == "u" else 60)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
def test_gaussian_filters_are_scipys_bit_for_bit(dtype, mode):
    x = _image(dtype)
    for kw in (dict(sigma=1.5), dict(sigma=(2, 0.7), order=(0, 1)), dict(sigma=1, order=2, truncate=2.5),
               dict(sigma=3, radius=2)):
        y = ndi.gaussian_filter(x, mode=mode, cval=1.5, **kw, **SPLIT)
        assert y.dtype == x.dtype and np.array_equal(y, sndi.gaussian_filter(x, mode=mode, cval=1.5, **kw)), kw
    assert np.array_equal(ndi.gaussian_filter1d(x, 2.5, axis=0, order=1, mode=mode, **SPLIT),
                          sndi.gaussian_filter1d(x, 2.5, axis=0, order=1, mode=mode))
    assert np.array_equal(ndi.gaussian_filter(x, 2, mode=[mode, "wrap"], output=np.float64, **SPLIT),
                          sndi.gaussian_filter(x, 2, mode=[mode, "wrap"], output=np.float64))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64])
def test_derivative_filters_are_scipys_bit_for_bit(dtype):
    x = _image(dtype, (33, 29), seed=1)
    for name in ("sobel", "prewitt"):
        for axis in (0, 1, -1):
            for mode in ("reflect", "constant", ["wrap", "nearest"]):
                y = getattr(ndi, name)(x, axis=axis, mode=mode, **SPLIT)
                assert np.array_equal(y, getattr(sndi, name)(x, axis=axis, mode=mode)), (name, axis, mode)
    assert np.array_equal(ndi.laplace(x, mode="mirror", **SPLIT), sndi.laplace(x, mode="mirror"))
    assert np.array_equal(ndi.laplace(x, axes=(1,), **SPLIT), sndi.laplace(x, axes=(1,)))
    f = x.astype(np.float64)
    assert np.array_equal(ndi.gaussian_laplace(f, 1.5, **SPLIT), sndi.gaussian_laplace(f, 1.5))
    assert np.array_equal(ndi.gaussian_laplace(x, [1, 2], output=np.float32, **SPLIT),
                          sndi.gaussian_laplace(x, [1, 2], output=np.float32))
    assert np.array_equal(ndi.gaussian_gradient_magnitude(f, 2, mode="wrap", **SPLIT),
                          sndi.gaussian_gradient_magnitude(f, 2, mode="wrap"))
    assert np.array_equal(ndi.gaussian_gradient_magnitude(x, 1, **SPLIT), sndi.gaussian_gradient_magnitude(x, 1))


def test_an_rgb_gaussian_is_one_line_and_scipys():
    """The issue's five lines (cast, transpose, broadcast a kernel, groups=3, transpose back)
    are one: a Gaussian on the (H, W) axes of a uint8 (H, W, 3) photo."""
    rgb = (np.random.default_rng(5).random((120, 90, 3)) * 255).astype(np.uint8)
    y = ndi.gaussian_filter(rgb, 2, axes=(0, 1), workers=4)
    assert y.dtype == np.uint8 and np.array_equal(y, sndi.gaussian_filter(rgb, 2, axes=(0, 1)))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_uniform_filters_on_integers_are_scipys_exactly(dtype):
    x = _image(dtype, (40, 31), seed=2)
    for kw in (dict(size=3), dict(size=(4, 5), origin=(1, -2)), dict(size=7, mode="wrap"), dict(size=1)):
        assert np.array_equal(ndi.uniform_filter(x, **kw, **SPLIT), sndi.uniform_filter(x, **kw)), kw
    assert np.array_equal(ndi.uniform_filter1d(x, 6, axis=0, origin=-1, **SPLIT),
                          sndi.uniform_filter1d(x, 6, axis=0, origin=-1))


def test_uniform_filters_on_floats_are_within_rounding_of_scipys_running_sum():
    x = _image(np.float64, (40, 31), seed=3)
    for kw in (dict(size=3), dict(size=(4, 5), mode="constant", cval=2.0), dict(size=9, mode="mirror")):
        np.testing.assert_allclose(ndi.uniform_filter(x, **kw, **SPLIT), sndi.uniform_filter(x, **kw), rtol=1e-12,
                                   atol=1e-12)
    z = x + 1j * x[::-1]
    np.testing.assert_allclose(ndi.uniform_filter(z, 3, **SPLIT), sndi.uniform_filter(z, 3), rtol=1e-12, atol=1e-12)


def test_filter_arguments_fail_as_scipys_do():
    x = np.zeros((8, 8))
    for mod in (ndi, sndi):
        with pytest.raises(ValueError, match="Radius"):
            mod.gaussian_filter1d(x, 1, radius=-1)
        with pytest.raises(RuntimeError, match="incorrect filter size"):
            mod.uniform_filter1d(x, 0)
        with pytest.raises(ValueError, match="invalid origin"):
            mod.uniform_filter1d(x, 3, origin=2)
        with pytest.raises(RuntimeError, match="sequence argument"):
            mod.gaussian_filter(x, [1, 2, 3])
    with pytest.raises(TypeError, match="unexpected keyword"):
        ndi.sobel(x, wokers=2)
