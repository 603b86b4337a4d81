"""scipy.ndimage's linear filters, built as scipy builds them: the same passes of
correlate1d in the same order, each into the same output (so an integer output rounds
between passes as scipy's does), each pass split across workers.  So every filter here is
bit for bit scipy's on backend 'ndimage', but the uniform filters: scipy computes them with
a running sum along the line, which a tile cannot restart where the whole line would; here
each output is the plain sum of its window divided by the size (exact for integer inputs,
within a few units in the last place of scipy's running sum for floats)."""

from __future__ import annotations

import numpy as np

from haloconv.ndimage import lazy
from haloconv.ndimage.arguments import axes_of, gaussian_radius, new_output, one_axis, per_axis
from haloconv.ndimage.correlations import correlate, correlate1d

_SPLIT = ("workers", "partition", "backend", "engine")


def _split(kw: dict) -> dict:
    """The keyword extras (workers, partition, backend, engine) out of ``kw``; anything else is an
    unexpected keyword, as for any Python function."""
    unknown = sorted(set(kw) - set(_SPLIT))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    return kw


def _gaussian_kernel1d(sigma: float, order: int, radius: int) -> np.ndarray:
    """The 1-D Gaussian kernel (or its ``order``-th derivative), as scipy.ndimage computes it."""
    if order < 0:
        raise ValueError("order must be non-negative")
    exponent_range = np.arange(order + 1)
    sigma2 = sigma * sigma
    x = np.arange(-radius, radius + 1)
    phi_x = np.exp(-0.5 / sigma2 * x ** 2)
    phi_x = phi_x / phi_x.sum()
    if order == 0:
        return phi_x
    q = np.zeros(order + 1)
    q[0] = 1
    d = np.diag(exponent_range[1:], 1)
    p = np.diag(np.ones(order) / -sigma2, -1)
    for _ in range(order):
        q = (d + p).dot(q)
    q = (x[:, None] ** exponent_range).dot(q)
    return q * phi_x


@lazy.dask_aware(lazy.reach_gaussian1d)
def gaussian_filter1d(input, sigma, axis=-1, order=0, output=None, mode="reflect", cval=0.0, truncate=4.0, *,
                      radius=None, **split):
    """1-D Gaussian filter along ``axis``, as ``scipy.ndimage.gaussian_filter1d``, split
    across workers (``workers``, ``partition``, ``backend``, ``engine`` as haloconv.ndimage.correlate)."""
    return correlate1d(input, _gaussian_weights(sigma, order, truncate, radius), axis, output, mode, cval, 0,
                       **_split(split))


def _gaussian_weights(sigma, order, truncate, radius) -> np.ndarray:
    """gaussian_filter1d's weights, to correlate with (the kernel reversed: scipy convolves)."""
    return _gaussian_kernel1d(sigma, order, gaussian_radius(sigma, truncate, radius))[::-1]


@lazy.dask_aware(lazy.reach_gaussian)
def gaussian_filter(input, sigma, order=0, output=None, mode="reflect", cval=0.0, truncate=4.0, *, radius=None,
                    axes=None, **split):
    """Multidimensional Gaussian filter, as ``scipy.ndimage.gaussian_filter``: one
    gaussian_filter1d per axis, each into ``output``, split across workers.

    Examples
    --------
    >>> import numpy as np, scipy.ndimage
    >>> from haloconv import ndimage as ndi
    >>> img = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    >>> y = ndi.gaussian_filter(img, 2, axes=(0, 1), workers=4)
    >>> bool((y == scipy.ndimage.gaussian_filter(img, 2, axes=(0, 1))).all())
    True
    """
    split = _split(split)
    input = np.asarray(input)
    output = new_output(output, input)
    axes = axes_of(axes, input.ndim)
    n = len(axes)
    passes = [(axes[i], s, o, m, r) for i, (s, o, m, r) in enumerate(zip(
        per_axis(sigma, n), per_axis(order, n), per_axis(mode, n), per_axis(radius, n))) if s > 1e-15]
    if not passes:
        output[...] = input[...]
    if len(passes) == 2 and split.get("backend", "ndimage") != "ndimage" and len({m for *_, m, _ in passes}) == 1:
        # a float backend on an image: the passes' kernels as one separable kernel in one split call (the
        # 'separable' backend filters it as OpenCV's sepFilter2D does, rows then columns)
        # instead of a full pass over the image per axis; within float32 of scipy's passes
        kernel = np.outer(*(_gaussian_weights(s_, o, truncate, r) for _, s_, o, _, r in passes))
        if split["backend"] == "auto":  # rank 1 by construction
            split = dict(split, backend="separable")
        return correlate(input, kernel, output, passes[0][3], cval, axes=[a for a, *_ in passes], **split)
    for axis, s, o, m, r in passes:
        gaussian_filter1d(input, s, axis, o, output, m, cval, truncate, radius=r, **split)
        input = output
    return output


@lazy.dask_aware(lazy.reach_one)
def prewitt(input, axis=-1, output=None, mode="reflect", cval=0.0, **split):
    """Prewitt filter, as ``scipy.ndimage.prewitt``, split across workers."""
    return _gradient(input, axis, output, mode, cval, [1, 1, 1], _split(split))


@lazy.dask_aware(lazy.reach_one)
def sobel(input, axis=-1, output=None, mode="reflect", cval=0.0, **split):
    """Sobel filter, as ``scipy.ndimage.sobel``, split across workers."""
    return _gradient(input, axis, output, mode, cval, [1, 2, 1], _split(split))


def _gradient(input, axis, output, mode, cval, smooth, split):
    input = np.asarray(input)
    axis = one_axis(axis, input.ndim, "axis")
    output = new_output(output, input)
    modes = per_axis(mode, input.ndim)
    correlate1d(input, [-1, 0, 1], axis, output, modes[axis], cval, 0, **split)
    for ii in (a for a in range(input.ndim) if a != axis):
        correlate1d(output, smooth, ii, output, modes[ii], cval, 0, **split)
    return output


@lazy.dask_aware(lazy.reach_one)
def laplace(input, output=None, mode="reflect", cval=0.0, *, axes=None, **split):
    """Laplace filter ([1, -2, 1] along each axis, summed), as ``scipy.ndimage.laplace``."""
    split = _split(split)

    def derivative2(x, axis, out, m, c):
        return correlate1d(x, [1, -2, 1], axis, out, m, c, 0, **split)

    return _laplace(input, derivative2, output, mode, cval, axes)


@lazy.dask_aware(lazy.reach_gaussian)
def gaussian_laplace(input, sigma, output=None, mode="reflect", cval=0.0, *, axes=None, truncate=4.0, radius=None,
                     **split):
    """Laplace filter of Gaussian second derivatives, as ``scipy.ndimage.gaussian_laplace``."""
    split = _split(split)
    input = np.asarray(input)
    axes_ = axes_of(axes, input.ndim)
    sigmas = per_axis(sigma, len(axes_))
    if len(axes_) < input.ndim:  # sigma 0 on the axes not filtered
        full = [0] * input.ndim
        for s, a in zip(sigmas, axes_):
            full[a] = s
        sigmas = full

    def derivative2(x, axis, out, m, c):
        order = [0] * x.ndim
        order[axis] = 2
        return gaussian_filter(x, sigmas, order, out, m, c, truncate, radius=radius, **split)

    return _laplace(input, derivative2, output, mode, cval, axes)


def _laplace(input, derivative2, output, mode, cval, axes):
    return _over_axes(input, lambda x, axis, out, m: derivative2(x, axis, out, m, cval), output, mode, axes, False)


def _over_axes(input, derivative, output, mode, axes, squares: bool):
    """``derivative`` along each of ``axes``, summed into ``output`` (the first pass written
    there, the others as new arrays of its dtype), or with ``squares`` the root of the sum of
    their squares: scipy.ndimage's generic_laplace and generic_gradient_magnitude."""
    input = np.asarray(input)
    output = new_output(output, input)
    axes = axes_of(axes, input.ndim)
    if not axes:
        output[...] = input[...]
        return output
    modes = per_axis(mode, len(axes))
    derivative(input, axes[0], output, modes[0])
    if squares:
        np.multiply(output, output, output)
    for ii in range(1, len(axes)):
        tmp = derivative(input, axes[ii], output.dtype, modes[ii])
        if squares:
            np.multiply(tmp, tmp, tmp)
        output += tmp
    if squares:
        np.sqrt(output, output, casting="unsafe")
    return output


@lazy.dask_aware(lazy.reach_gaussian)
def gaussian_gradient_magnitude(input, sigma, output=None, mode="reflect", cval=0.0, *, axes=None, truncate=4.0,
                                radius=None, **split):
    """Gradient magnitude of Gaussian first derivatives, as
    ``scipy.ndimage.gaussian_gradient_magnitude``."""
    split = _split(split)

    def derivative(x, axis, out, m):
        order = [0] * x.ndim
        order[axis] = 1
        return gaussian_filter(x, sigma, order, out, m, cval, truncate, radius=radius, **split)

    return _over_axes(input, derivative, output, mode, axes, True)


@lazy.dask_aware(lazy.reach_uniform1d)
def uniform_filter1d(input, size, axis=-1, output=None, mode="reflect", cval=0.0, origin=0, **split):
    """1-D uniform filter, as ``scipy.ndimage.uniform_filter1d``: each output the sum of its
    ``size`` inputs divided by ``size`` (scipy keeps a running sum; see the module)."""
    split = _split(split)
    input = np.asarray(input)
    axis = one_axis(axis, input.ndim, "axis")
    if size < 1:
        raise RuntimeError("incorrect filter size")
    if (size // 2 + origin < 0) or (size // 2 + origin >= size):
        raise ValueError("invalid origin")
    complex_output = input.dtype.kind == "c"
    output = new_output(output, input, complex_output=complex_output)
    if complex_output:
        uniform_filter1d(input.real, size, axis, output.real, mode, np.real(cval), origin, **split)
        uniform_filter1d(input.imag, size, axis, output.imag, mode, np.imag(cval), origin, **split)
        return output
    sums = correlate1d(input, np.ones(size), axis, np.float64, mode, cval, origin, **split)
    np.divide(sums, size, out=sums)
    output[...] = sums if output.dtype.kind == "f" else sums.astype(output.dtype)
    return output


@lazy.dask_aware(lazy.reach_uniform)
def uniform_filter(input, size=3, output=None, mode="reflect", cval=0.0, origin=0, *, axes=None, **split):
    """Multidimensional uniform filter, as ``scipy.ndimage.uniform_filter``: one
    uniform_filter1d per axis, each into ``output``."""
    split = _split(split)
    input = np.asarray(input)
    output = new_output(output, input, complex_output=input.dtype.kind == "c")
    axes = axes_of(axes, input.ndim)
    n = len(axes)
    passes = [(axes[i], s, o, m) for i, (s, o, m) in enumerate(zip(
        per_axis(size, n), per_axis(origin, n), per_axis(mode, n))) if s > 1]
    if not passes:
        output[...] = input[...]
    for axis, s, o, m in passes:
        uniform_filter1d(input, int(s), axis, output, m, cval, o, **split)
        input = output
    return output
