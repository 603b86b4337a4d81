"""Dask arrays in, Dask arrays out: a haloconv.ndimage function given a ``dask.array.Array``
returns one, lazily, with the input's chunks.

The graph has one task per output chunk.  The task receives exactly the input chunks that
hold the chunk's box grown by the filter's reach (the halo) on each filtered axis, where the
mode says to read them: beyond the image's edge, ``reflect``, ``mirror``, ``wrap`` and
``nearest`` read the image folded back (tiling/geometry.source_index: a border is a halo
like any other, so a chunk at an edge may read chunks from the far side or several chunks
away, and kernels longer than a chunk or the image are read as scipy reads them), and
``constant`` reads ``cval``.  The task assembles that window, runs the same haloconv.ndimage
function on it and keeps the chunk's outputs: those read only the window, the same values
in the same order as a call on the whole image, so each chunk is bit for bit the whole
call's (on backend 'ndimage'; a fast backend keeps its own guarantee).  No padded copy of
the array is made and nothing is rechunked: where a task reads part of a neighbouring
chunk, a slicing task beside that chunk cuts the strip it needs, so only strips travel
between workers; a task holds its own chunk, the strips, its window and its output chunk.

The graph is plain Dask: it runs on any scheduler (threads, processes, dask.distributed).

One exception: the filters that chain passes along axes (``CHAINED``) under mode
'constant' with a nonzero ``cval``.  scipy pads each pass's result with ``cval``; a window
would hold the earlier passes applied to ``cval`` instead (equal only when ``cval`` is 0).
There the function runs on the whole array as one task: still lazy and exact, not split.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import operator
from collections.abc import Callable

import numpy as np

from haloconv.engines.dask_graph import is_dask
from haloconv.ndimage.arguments import axes_of, gaussian_radius, holds, per_axis
from haloconv.tiling.geometry import source_index
from haloconv.tiling.spec import SCIPY_MODES


def dask_aware(reach: Callable[[dict, int], list[int]]):
    """A haloconv.ndimage function that, given a dask array, returns one (see the module
    docstring).  ``reach(arguments, ndim)``: how far an output reads, per input axis, at
    most (more is harmless: the window is only larger), from the call's bound arguments."""

    def wrap(func):
        signature = inspect.signature(func)
        # the filters' **split: the keyword extras, passed on as they came
        var_kw = next((n for n, p in signature.parameters.items() if p.kind is p.VAR_KEYWORD), None)

        @functools.wraps(func)
        def call(*args, **kwargs):
            if not args or not is_dask(args[0]):
                return func(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            extras = arguments.pop(var_kw, {}) if var_kw else {}
            return _lazily(func, arguments, extras, reach)

        return call

    return wrap


def _lazily(func, arguments: dict, extras: dict, reach):
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    d = arguments.pop("input")
    if arguments.get("output") is not None and not isinstance(arguments["output"], type | np.dtype | str):
        raise TypeError("output must be None or a dtype for a dask array input (the result is a new dask array)")
    kw = {**arguments, **extras}
    output = kw.pop("output", None)
    if kw.get("workers") is None:
        kw["workers"] = 1  # a task per chunk: Dask's workers run the chunks side by side
    call = functools.partial(func, **kw)
    # the result's dtype: the function on a one-element array (an argument error surfaces here)
    dtype = call(np.zeros((1,) * d.ndim, d.dtype), output=output).dtype
    if (kw.get("backend", "ndimage") == "ndimage" and kw.get("engine", "threads") == "threads"
            and d.dtype != np.float16 and not func.__name__.startswith("uniform")):
        # backend 'ndimage' is bit for bit scipy.ndimage's own call, and a chunk is one tile:
        # scipy on the window directly, without splitting it again (the uniform filters stay
        # haloconv's, a window's plain sum, as on numpy arrays; scipy takes no float16)
        import scipy.ndimage

        theirs = {k: v for k, v in kw.items() if k not in ("workers", "partition", "backend", "engine")}
        call = functools.partial(getattr(scipy.ndimage, func.__name__), **theirs)
    lo_hi = reach(dict(arguments), d.ndim)
    modes = _modes(arguments.get("mode", "reflect"), d.ndim, arguments)
    cval = arguments.get("cval", 0.0)
    if func.__name__ in CHAINED and "constant" in modes and cval != 0:
        # scipy pads each pass's result with cval, where a window holds the earlier passes
        # applied to cval: equal only for cval 0; here the function runs on the array whole
        # (one task, still lazy)
        whole = d.rechunk(d.shape)
        return whole.map_blocks(lambda b: call(b, output=dtype), dtype=dtype).rechunk(d.chunks)
    starts = [np.cumsum((0, *c)) for c in d.chunks]
    name = f"haloconv-{func.__name__}-" + tokenize(d, func.__name__, kw, str(dtype), lo_hi)
    dsk = {}
    for block in itertools.product(*(range(n) for n in d.numblocks)):
        sources = []
        for a in range(d.ndim):
            r = lo_hi[a]
            b0, b1 = int(starts[a][block[a]]), int(starts[a][block[a] + 1])
            s = [source_index(p, d.shape[a], modes[a]) for p in range(b0 - r, b1 + r)]
            sources.append(np.array([-1 if v is None else v for v in s], dtype=np.int64))
        held = [np.unique(np.searchsorted(starts[a], s[s >= 0], side="right") - 1) for a, s in enumerate(sources)]
        pieces, places = [], []
        for part in itertools.product(*held):
            # the box of this input chunk the window reads (a slice per axis where it reads it
            # forwards in one run, else indices), and where in the window it goes
            pos, off = [], []
            for a, c in enumerate(part):
                c0, c1 = starts[a][c], starts[a][c + 1]
                inside = (sources[a] >= c0) & (sources[a] < c1)
                pos.append(_as_slice(np.nonzero(inside)[0]))
                off.append(_as_slice(sources[a][inside] - c0))
            whole = all(isinstance(o, slice) and o == slice(0, int(starts[a][c + 1] - starts[a][c]))
                        for a, (o, c) in enumerate(zip(off, part)))
            if whole:  # the chunk itself (the block's own, or a neighbour thinner than the halo)
                pieces.append((d.name, *part))
            else:  # only the strip it needs travels: a slicing task where the chunk is
                key = (f"{name}-halo", *block, *part)
                index = tuple(off) if all(isinstance(o, slice) for o in off) else np.ix_(*map(_as_index, off))
                dsk[key] = (operator.getitem, (d.name, *part), index)
                pieces.append(key)
            places.append(tuple(pos))
        crop = tuple(slice(r, r + int(starts[a][block[a] + 1] - starts[a][block[a]])) for a, r in enumerate(lo_hi))
        task = functools.partial(_chunk, call=call, places=places, shape=tuple(len(s) for s in sources),
                                 constant=any((s < 0).any() for s in sources), cval=cval, dtype=d.dtype,
                                 out_dtype=dtype, crop=crop)
        dsk[(name, *block)] = (task, pieces)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[d])
    return da.Array(graph, name, chunks=d.chunks, dtype=dtype)


# the filters that run passes along axes one after another, each on the last one's result
CHAINED = ("gaussian_filter", "uniform_filter", "sobel", "prewitt", "gaussian_laplace",
           "gaussian_gradient_magnitude")


def _modes(mode, ndim: int, arguments: dict) -> list[str]:
    """haloconv's mode per input axis: one mode for all, or a sequence over the input's axes
    or over the filtered ones (``axes``)."""
    if isinstance(mode, str):
        return [SCIPY_MODES.get(mode, "constant")] * ndim
    mode = list(mode)
    if len(mode) == ndim:
        return [SCIPY_MODES.get(m, "constant") for m in mode]
    axes = axes_of(arguments.get("axes"), ndim)
    out = ["constant"] * ndim  # axes not filtered read nothing beyond the chunk
    for a, m in zip(axes, mode):
        out[a] = SCIPY_MODES.get(m, "constant")
    return out


def _chunk(arrays, *, call, places, shape, constant, cval, dtype, out_dtype, crop):
    """One output chunk: its window assembled from the boxes of the input chunks it reads
    (``arrays``, each going to its ``places`` entry), the function on the window, the
    chunk's outputs kept."""
    window_dtype = dtype
    if constant and not holds(dtype, cval):
        window_dtype = np.float64  # scipy reads cval as a float64 beside the input's values
    window = np.empty(shape, window_dtype)
    if constant:
        window.fill(cval)
    for arr, pos in zip(arrays, places):
        if all(isinstance(p, slice) for p in pos):
            window[pos] = arr
        else:  # a box the mode reads backwards or in pieces
            window[np.ix_(*map(_as_index, pos))] = arr
    return call(window, output=out_dtype)[crop]


def _as_slice(index: np.ndarray):
    """``index`` as a slice where it is a run of consecutive ascending integers, else itself."""
    if len(index) and index[-1] - index[0] == len(index) - 1 and (len(index) < 2 or (np.diff(index) == 1).all()):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def _as_index(index) -> np.ndarray:
    return np.arange(index.start, index.stop) if isinstance(index, slice) else index


# -- how far each function reads -----------------------------------------------------------------
def _gaussian_radii(arguments: dict, n: int) -> list[int]:
    return [gaussian_radius(s, arguments.get("truncate", 4.0), r)
            for s, r in zip(per_axis(arguments["sigma"], n), per_axis(arguments.get("radius"), n))]


def _on_axes(values: list[int], axes: list[int], ndim: int) -> list[int]:
    out = [0] * ndim
    for a, v in zip(axes, values):
        out[a] = max(out[a], v)
    return out


def reach_correlate(arguments: dict, ndim: int) -> list[int]:
    weights = np.asarray(arguments["weights"])
    axes = axes_of(arguments.get("axes"), ndim) if weights.ndim != ndim else list(range(ndim))
    origins = per_axis(arguments.get("origin", 0), len(axes))
    return _on_axes([k + abs(int(o)) for k, o in zip(weights.shape, origins)], axes, ndim)


def reach_correlate1d(arguments: dict, ndim: int) -> list[int]:
    k = len(np.atleast_1d(np.asarray(arguments["weights"])))
    return _on_axes([k + abs(int(arguments.get("origin", 0)))], [int(arguments.get("axis", -1)) % ndim], ndim)


def reach_gaussian1d(arguments: dict, ndim: int) -> list[int]:
    return _on_axes(_gaussian_radii(arguments, 1), [int(arguments.get("axis", -1)) % ndim], ndim)


def reach_gaussian(arguments: dict, ndim: int) -> list[int]:
    axes = axes_of(arguments.get("axes"), ndim)
    return _on_axes(_gaussian_radii(arguments, len(axes)), axes, ndim)


def reach_uniform(arguments: dict, ndim: int) -> list[int]:
    axes = axes_of(arguments.get("axes"), ndim)
    sizes, origins = per_axis(arguments.get("size", 3), len(axes)), per_axis(arguments.get("origin", 0), len(axes))
    return _on_axes([int(s) + abs(int(o)) for s, o in zip(sizes, origins)], axes, ndim)


def reach_uniform1d(arguments: dict, ndim: int) -> list[int]:
    size = int(arguments["size"]) + abs(int(arguments.get("origin", 0)))
    return _on_axes([size], [int(arguments.get("axis", -1)) % ndim], ndim)


def reach_one(arguments: dict, ndim: int) -> list[int]:
    """sobel, prewitt (every axis), laplace (the filtered axes): 3-tap kernels."""
    return _on_axes([1] * ndim, axes_of(arguments.get("axes"), ndim), ndim)
