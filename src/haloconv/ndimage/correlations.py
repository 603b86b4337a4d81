"""scipy.ndimage's correlations (correlate, convolve, correlate1d, convolve1d), split across
workers, with scipy's signatures, defaults (mode 'reflect'), modes, ``cval``, ``origin``,
``axes``, ``output`` and dtypes; each tile's halo is read as the mode says
(tiling/geometry.py: a border is a halo like any other, the whole input is never padded).
The keyword extras ``workers``, ``partition``, ``backend`` and ``engine`` say how it is split
and computed, and where.

With ``backend='ndimage'`` (the default here) every tile is computed by scipy.ndimage
itself, so the result is bit for bit scipy's on the whole input, split or not: scipy sums
each output in float64 in an order that does not depend on the tile, then converts it to
the output's dtype (an integer output truncated, as scipy's C cast does).  ``correlate1d``
and ``convolve1d`` compute tiles with scipy's correlate1d (backend 'ndimage1d'), which
adds a symmetric kernel's taps in pairs and so rounds unlike ``correlate``.

Where this differs from scipy.ndimage: float16 inputs (scipy refuses them) are computed in
float32 and converted back; more than three filtered axes (a kernel longer than 1 on four
axes or more) run scipy.ndimage on the whole input, on one worker.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from haloconv.ndimage import lazy, native
from haloconv.ndimage.arguments import (
    as_int,
    axes_of,
    haloconv_mode,
    holds,
    invalid_origin,
    new_output,
    one_axis,
    per_axis,
)

MAX_SPATIAL = 3  # the most axes a plan splits and filters (ConvSpec: 1-3 spatial dims)


@lazy.dask_aware(lazy.reach_correlate)
def correlate(input, weights, output=None, mode="reflect", cval=0.0, origin=0, *, axes=None,
              workers: int | None = None, partition="auto", backend: str = "ndimage", engine="threads"):
    """Multidimensional correlation, as ``scipy.ndimage.correlate``, split across workers.

    Parameters
    ----------
    input, weights, output, mode, cval, origin, axes
        As scipy.ndimage.correlate's: ``mode`` one of 'reflect' (the default),
        'constant', 'nearest', 'mirror', 'wrap' and their 'grid-' spellings.
    workers : int, optional
        Tiles computed at once, on threads of this process (default: the cores).
    partition : str or sequence of int, optional
        How the image is split ('rows', 'cols', 'grid', or counts over the filtered axes);
        'auto' (the default) lets the cost model choose.
    backend : str
        'ndimage' (default): every tile computed by scipy.ndimage, bit for bit scipy's
        result on the whole input.  'opencv', 'separable' (a rank-1 kernel) or 'auto' (the
        cost model picks) on 2-D images (or a stack of them along axes not filtered) of
        uint8, uint16, int16, float32 or float64, with a mode that is an OpenCV border type
        ('reflect': BORDER_REFLECT, 'mirror': BORDER_REFLECT_101, 'nearest':
        BORDER_REPLICATE, 'constant' with cval 0), origin 0, an output of the image's dtype,
        split by rows (partition 'auto' or 'rows') on threads: OpenCV's own call in the
        image's dtype, bit for bit ``cv2.sepFilter2D`` (rank-1 kernels) or ``cv2.filter2D``
        on the whole image with that border (ndimage/native.py) — for integers OpenCV's
        sums rounded to the nearest and saturated where scipy truncates (a unit or two
        apart).  Every other call on these backends: computed in float32 (images of up to
        16-bit values and float32) or float64, every mode's halo read by haloconv, within
        the backend's tolerance of scipy, then converted to the output's dtype as scipy
        converts (integers truncated, so a sum that float32 rounds just below an integer
        truncates one lower than scipy's float64 sum).
    engine : {'threads', 'processes'} or LocalCluster
        Where the tiles are computed: threads of this process (the default, every dtype),
        or worker processes — a pool started for the call, or a ``haloconv.LocalCluster``
        you hold.  On processes the image travels as float64 (every value of the integer
        and float dtypes up to 32 bits is exact there; scipy computes in float64 too) and
        the result is converted to the output's dtype as scipy converts it.

    Returns
    -------
    numpy.ndarray
        The correlation, ``input``'s shape; ``output`` itself when it is an array.

    Examples
    --------
    >>> import numpy as np, scipy.ndimage
    >>> from haloconv import ndimage as ndi
    >>> img = np.random.default_rng(0).random((64, 48)).astype(np.float32)
    >>> k = np.ones((5, 3)) / 15
    >>> y = ndi.correlate(img, k, mode="mirror", workers=4, partition="rows")
    >>> bool((y == scipy.ndimage.correlate(img, k, mode="mirror")).all())
    True
    """
    return _correlate_or_convolve(input, weights, output, mode, cval, origin, axes, False,
                                  dict(workers=workers, partition=partition, backend=backend, engine=engine))


@lazy.dask_aware(lazy.reach_correlate)
def convolve(input, weights, output=None, mode="reflect", cval=0.0, origin=0, *, axes=None,
             workers: int | None = None, partition="auto", backend: str = "ndimage", engine="threads"):
    """Multidimensional convolution, as ``scipy.ndimage.convolve`` (the weights flipped,
    the origin moved as scipy moves it), split across workers; parameters as ``correlate``."""
    return _correlate_or_convolve(input, weights, output, mode, cval, origin, axes, True,
                                  dict(workers=workers, partition=partition, backend=backend, engine=engine))


@lazy.dask_aware(lazy.reach_correlate1d)
def correlate1d(input, weights, axis=-1, output=None, mode="reflect", cval=0.0, origin=0, *,
                workers: int | None = None, partition="auto", backend: str = "ndimage", engine="threads"):
    """One-dimensional correlation along ``axis``, as ``scipy.ndimage.correlate1d``, split
    across workers; ``backend='ndimage'`` computes tiles with scipy's correlate1d (bit for
    bit its result).  Other parameters as ``correlate``."""
    input, weights = np.asarray(input), np.asarray(weights)
    opts = dict(workers=workers, partition=partition, backend=backend, engine=engine)
    if input.dtype.kind == "c" or weights.dtype.kind == "c":
        if weights.dtype.kind == "c":
            weights = weights.conj().astype(np.complex128, copy=False)
        return _complex(correlate1d, input, weights, new_output(output, input, complex_output=True), cval,
                        dict(axis=axis, mode=mode, origin=origin, **opts))
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or weights.shape[0] < 1:
        raise RuntimeError("no filter weights given")
    axis = one_axis(axis, input.ndim, "axis")
    origin = as_int(origin, "origin")
    if invalid_origin(origin, len(weights)):
        raise ValueError("Invalid origin; origin must satisfy -(len(weights) // 2) <= origin <= "
                         "(len(weights)-1) // 2")
    shape = [1] * input.ndim
    shape[axis] = len(weights)
    origins = [0] * input.ndim
    origins[axis] = origin
    return _run(input, weights.reshape(shape), origins, list(range(input.ndim)), new_output(output, input), mode, cval,
                opts, one_d=True)


@lazy.dask_aware(lazy.reach_correlate1d)
def convolve1d(input, weights, axis=-1, output=None, mode="reflect", cval=0.0, origin=0, *,
               workers: int | None = None, partition="auto", backend: str = "ndimage", engine="threads"):
    """One-dimensional convolution along ``axis``, as ``scipy.ndimage.convolve1d``, split
    across workers; parameters as ``correlate1d``."""
    weights = np.asarray(weights)
    weights = weights[::-1]
    origin = -as_int(origin, "origin")
    if not weights.shape[0] & 1:
        origin -= 1
    if weights.dtype.kind == "c":  # pre-conjugate: correlate1d conjugates again
        weights = weights.conj()
    return correlate1d(input, weights, axis, output, mode, cval, origin, workers=workers, partition=partition,
                       backend=backend, engine=engine)


# -- scipy's semantics --------------------------------------------------------------------------
def _correlate_or_convolve(input, weights, output, mode, cval, origin, axes, convolution: bool, opts: dict):
    input, weights = np.asarray(input), np.asarray(weights)
    if input.dtype.kind == "c" or weights.dtype.kind == "c":
        if weights.dtype.kind == "c" and not convolution:
            weights = weights.conj()  # as np.correlate: the weights conjugated, not the input
        func = convolve if convolution else correlate
        return _complex(func, input, weights, new_output(output, input, complex_output=True), cval,
                        dict(mode=mode, origin=origin, axes=axes, **opts))
    axes = axes_of(axes, input.ndim)
    weights = np.asarray(weights, dtype=np.float64)
    if len(axes) < input.ndim:
        if weights.ndim != len(axes):
            raise RuntimeError(f"weights.ndim ({weights.ndim}) must match len(axes) ({len(axes)})")
        weights = np.expand_dims(weights, tuple(a for a in range(input.ndim) if a not in axes))
    origins = [0] * input.ndim
    for o, a in zip(per_axis(origin, len(axes)), axes):
        origins[a] = as_int(o, "origin")
    if weights.ndim != input.ndim or 0 in weights.shape:
        raise RuntimeError(f"weights.ndim ({weights.ndim}) must match len(axes) ({len(axes)})")
    if convolution:
        weights = weights[(slice(None, None, -1),) * weights.ndim]
        origins = [-o - (0 if k & 1 else 1) for o, k in zip(origins, weights.shape)]
    for o, k in zip(origins, weights.shape):
        if invalid_origin(o, k):
            raise ValueError("Invalid origin; origin must satisfy -(weights.shape[k] // 2) <= origin[k] <= "
                             "(weights.shape[k]-1) // 2")
    if not isinstance(mode, str) and isinstance(mode, Sequence):
        raise RuntimeError("A sequence of modes is not supported")
    return _run(input, weights, origins, axes, new_output(output, input), mode, cval, opts, one_d=False)


def _run(input: np.ndarray, weights: np.ndarray, origins: list[int], axes: list[int], output: np.ndarray, mode,
         cval, opts: dict, one_d: bool) -> np.ndarray:
    """The correlation of ``input`` with ``weights`` (both of input's ndim, float64
    weights), written into ``output``.  The plan's spatial axes are ``axes`` (so 'rows'
    and 'cols' are the image's), or where there are more than three of them the axes the
    kernel is longer than 1 on (or has an origin); the other axes are its batch."""
    from haloconv.engines.inprocess import arrays as array_threads

    padding_mode = haloconv_mode(mode, cval)
    spatial = sorted(axes) if len(axes) <= MAX_SPATIAL else (
        [a for a in range(input.ndim) if weights.shape[a] > 1 or origins[a] != 0] or [input.ndim - 1])
    if input.size == 0:
        return output
    if len(spatial) > MAX_SPATIAL:
        import scipy.ndimage

        fn = scipy.ndimage.correlate1d if one_d else scipy.ndimage.correlate
        if one_d:
            (a,) = [a for a in range(input.ndim) if weights.shape[a] > 1] or [input.ndim - 1]
            return fn(input, weights.reshape(-1), a, output, mode, cval, origins[a])
        return fn(input, weights, output, mode, cval, origins)
    batch = [a for a in range(input.ndim) if a not in spatial]
    x = np.moveaxis(input, batch + spatial, range(input.ndim))
    n = math.prod(x.shape[:len(batch)])
    x = x.reshape(n, 1, *x.shape[len(batch):])
    dtype = output.dtype
    compute = x.dtype
    if x.dtype == np.float16 or x.dtype == np.bool_:  # scipy takes no float16: float32 here
        compute = np.dtype(np.float32) if x.dtype == np.float16 else np.dtype(np.uint8)
        x = x.astype(compute)
    if isinstance(padding_mode, float) and not holds(compute, padding_mode):
        # scipy reads cval as a float64 beside the input's values: a window of the input's
        # dtype could not hold it (-1 in uint8), so the input is read as float64 (exactly)
        x = x.astype(np.float64)
    w = weights.transpose(spatial + batch).reshape(1, 1, *(weights.shape[a] for a in spatial))
    pads = [(k // 2 + o, k - 1 - k // 2 - o) for k, o in ((weights.shape[a], origins[a]) for a in spatial)]
    backend = opts["backend"]
    if backend in ("opencv", "separable", "auto") and native.applies(x, w, origins, padding_mode, dtype, opts) and (
            backend != "separable" or native.rank1(w, x.dtype)):
        # OpenCV's own call in the image's dtype, the mode its border (ndimage/native.py)
        direct = _writes_into(input, output, batch, spatial, x.dtype)
        y = native.correlate(np.ascontiguousarray(x), w, padding_mode,
                             output.reshape(x.shape) if direct else np.empty(x.shape, x.dtype), opts["workers"])
        return output if direct else _to_output(y, input, output, batch, spatial)
    if backend == "ndimage" and one_d:
        backend = "ndimage1d"
    if backend not in ("ndimage", "ndimage1d"):
        # the float backends (OpenCV, separable, 'auto'): float32 for images of up to 16-bit
        # values and float32 inputs, float64 otherwise, weights of the same dtype; the result is
        # converted to the output's dtype as scipy converts its sums (integers truncated)
        fast = np.dtype(np.float32) if x.dtype.itemsize <= 2 or x.dtype == np.float32 else np.dtype(np.float64)
        x, w = x.astype(fast, copy=False), w.astype(fast)
        result_dtype = fast
    partition = tuple(opts["partition"]) if isinstance(opts["partition"], list) else opts["partition"]
    # priced for the engine that runs it: threads, or worker processes
    priced = "threads" if isinstance(opts["engine"], str) and opts["engine"] == "threads" else "processes"
    plan = _plan(tuple(x.shape), tuple(w.shape), tuple(pads), padding_mode, opts["workers"], partition, backend,
                 priced)
    if backend == "auto" and not array_threads.runs(plan):  # the cost model's pick takes no arrays (fft)
        plan = _plan(tuple(x.shape), tuple(w.shape), tuple(pads), padding_mode, opts["workers"], partition, "ndimage",
                     priced)
    if backend in ("ndimage", "ndimage1d"):
        result_dtype = dtype if dtype not in (np.float16, np.bool_) else (
            np.float32 if dtype == np.float16 else np.float64)
    direct = _writes_into(input, output, batch, spatial, result_dtype)
    engine = opts["engine"]
    if isinstance(engine, str) and engine == "threads":
        out = output.reshape(x.shape) if direct else None
        y = array_threads.run(plan, np.ascontiguousarray(x), w, dtype=result_dtype, out=out).output
    else:
        direct = False
        y = _on_processes(plan, x, w, engine).astype(result_dtype, copy=False)
    return output if direct else _to_output(y, input, output, batch, spatial)


def _writes_into(input: np.ndarray, output: np.ndarray, batch: list[int], spatial: list[int], result_dtype) -> bool:
    """Whether the tiles write straight into ``output``: laid out as the plan's result (batch
    axes first), of the result's dtype, C-ordered, and not the input itself (scipy's filters
    pass the same array as both)."""
    return (batch + spatial == list(range(input.ndim)) and output.dtype == result_dtype
            and output.flags.c_contiguous and not np.may_share_memory(input, output))


def _to_output(y: np.ndarray, input: np.ndarray, output: np.ndarray, batch: list[int], spatial: list[int]):
    """The plan's result ``y`` (batch axes folded first) written into ``output`` in the
    input's axis order, as scipy converts to the output's dtype (bools: nonzero)."""
    y = y.reshape(*(input.shape[a] for a in batch), *(input.shape[a] for a in spatial))
    y = np.moveaxis(y, range(input.ndim), batch + spatial)
    output[...] = y if output.dtype != np.bool_ else (y != 0)
    return output


def _on_processes(plan, x: np.ndarray, w: np.ndarray, engine) -> np.ndarray:
    """The plan run on worker processes (``engine`` 'processes': a pool for this call, or
    a LocalCluster), in float64: the input's values are exact there (up to 32-bit integers),
    scipy's tiles sum in float64 as they do on threads, and the caller converts the result
    as scipy converts its float64 sums."""
    import torch

    from haloconv import dispatch
    from haloconv.options import RunOptions

    if isinstance(engine, str) and engine != "processes":
        raise ValueError(f"engine must be 'threads', 'processes' or a LocalCluster, got {engine!r}")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    wt = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64))
    return dispatch.run(plan, xt, wt, None, RunOptions.of(engine=engine)).output.numpy()


@functools.lru_cache(maxsize=256)
def _plan(x_shape, w_shape, pads, padding_mode, workers, partition, backend, engine):
    """The plan of a call, kept per configuration: a plan is made from shapes alone, and a
    filter applied again to images of one size (a stack, a video, a test suite) plans once."""
    from haloconv import planner

    return planner.plan(x_shape, w_shape, padding=pads, padding_mode=padding_mode, workers=workers,
                        partition=partition, backend=backend, engine=engine)


def _complex(func, input, weights, output, cval, kwargs):
    """A complex correlation as real ones (scipy.ndimage's _complex_via_real_components)."""
    ci, cw = input.dtype.kind == "c", weights.dtype.kind == "c"
    if ci and cw:
        func(input.real, weights.real, output=output.real, cval=np.real(cval), **kwargs)
        output.real -= func(input.imag, weights.imag, output=None, cval=np.imag(cval), **kwargs)
        func(input.real, weights.imag, output=output.imag, cval=np.real(cval), **kwargs)
        output.imag += func(input.imag, weights.real, output=None, cval=np.imag(cval), **kwargs)
    elif ci:
        func(input.real, weights, output=output.real, cval=np.real(cval), **kwargs)
        func(input.imag, weights, output=output.imag, cval=np.imag(cval), **kwargs)
    else:
        if np.iscomplexobj(cval):
            raise ValueError("Cannot provide a complex-valued cval when the input is real.")
        func(input, weights.real, output=output.real, cval=cval, **kwargs)
        func(input, weights.imag, output=output.imag, cval=cval, **kwargs)
    return output


