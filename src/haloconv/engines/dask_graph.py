"""haloconv.conv on a dask array: a dask array back, lazily, one task per output chunk.

The output's chunks follow the input's (tiling/plan.chunk_ranges: a same-size convolution
keeps them, a strided one scales them; the output channels are one chunk).  Each output
chunk is a tile of a Plan built on those ranges (plan.build_on_ranges): its task receives
the pieces of its window — each a slice of the input, which dask cuts from the chunks it
overlaps, so only the strips a tile needs travel between workers: no padded copy of every
chunk, no rechunk — assembles the window as every engine does (engines/windows), and
computes the tile with the plan's backend (compute/tile).  So each chunk is bit for bit the
same tile's output on any engine (for the torch backend: the single-node call's).

The graph is plain Dask: it runs on any scheduler (threads, processes, dask.distributed).
dask is imported only here, when a dask array comes in.
"""

from __future__ import annotations

import functools
import itertools
import operator
from dataclasses import replace

import numpy as np

from haloconv.compute import backends
from haloconv.compute.tile import compute_tile, compute_tile_array
from haloconv.engines.windows import blank, piece_data
from haloconv.tiling.plan import Plan


def is_dask(x) -> bool:
    """Whether ``x`` is a dask array (without importing dask)."""
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "chunks") and hasattr(x, "__dask_graph__")


def run(plan: Plan, x, weight: np.ndarray, bias: np.ndarray | None):
    """The dask array of ``plan``'s output on the dask array ``x``: the tiles of ``plan``
    (one per output chunk, in the row-major order of plan.splits) computed lazily.  A tile's
    task depends on the input chunks its pieces read: on a chunk itself where a piece takes
    all of it, else on a slicing task beside that chunk that cuts the strip it takes."""
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    name = "haloconv-conv-" + tokenize(x, weight, bias, plan.spec, plan.backend, plan.splits)
    starts = [np.cumsum((0, *c)) for c in x.chunks]
    dsk: dict = {f"{name}-weight": weight, f"{name}-bias": bias}  # once in the graph, read by every task
    for k, tile in enumerate(plan.tiles):
        keys, places = [], []
        for p, piece in enumerate(tile.pieces):
            spans = [range(int(np.searchsorted(st, lo, "right")) - 1, int(np.searchsorted(st, hi - 1, "right")))
                     for st, lo, hi in zip(starts, piece.src.lo, piece.src.hi)]
            for chunk in itertools.product(*spans):
                c_lo = [int(st[c]) for st, c in zip(starts, chunk)]
                c_hi = [int(st[c + 1]) for st, c in zip(starts, chunk)]
                lo = [max(a, b) for a, b in zip(piece.src.lo, c_lo)]
                hi = [min(a, b) for a, b in zip(piece.src.hi, c_hi)]
                if lo == c_lo and hi == c_hi:
                    key = (x.name, *chunk)
                else:
                    key = (f"{name}-strip", k, p, *chunk)
                    dsk[key] = (operator.getitem, (x.name, *chunk),
                                tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, c_lo)))
                keys.append(key)
                places.append((p, tuple(slice(a - s0, b - s0) for a, b, s0 in zip(lo, hi, piece.src.lo))))
        one = one_tile(plan, tile)
        block = np.unravel_index(k, plan.splits)
        dsk[(name, *map(int, block))] = (functools.partial(tile_output, one, places), f"{name}-weight",
                                         f"{name}-bias", keys)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x])
    return da.Array(graph, name, chunks=_output_chunks(plan), dtype=x.dtype)


def from_reader(plan: Plan, read, dtype, weight: np.ndarray, bias: np.ndarray | None):
    """The dask array of ``plan``'s output on an input that ``read(box)`` returns box by box
    (a file, say: a picklable callable, run on the worker): each tile's task reads exactly
    its pieces itself and depends on no other task, so a worker holds only the tiles it is
    computing — their windows, pieces and outputs — whatever the input's size."""
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    name = "haloconv-conv-" + tokenize(read, weight, bias, plan.spec, plan.backend, plan.splits)
    dsk: dict = {f"{name}-weight": weight, f"{name}-bias": bias}
    for k, tile in enumerate(plan.tiles):
        dsk[(name, *map(int, np.unravel_index(k, plan.splits)))] = (
            functools.partial(read_tile, one_tile(plan, tile), read), f"{name}-weight", f"{name}-bias")
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[])
    return da.Array(graph, name, chunks=_output_chunks(plan), dtype=np.dtype(dtype))


def one_tile(plan: Plan, tile) -> Plan:
    """``plan`` cut to one of its tiles: what a task needs of the plan, small to ship."""
    return replace(plan, tiles=(tile,), workers=1)


def read_tile(plan: Plan, read, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The output box of ``plan``'s one tile, each piece of its window read by ``read(box)``."""
    pieces = plan.tiles[0].pieces
    places = [(p, tuple(slice(0, n) for n in piece.src.shape)) for p, piece in enumerate(pieces)]
    return tile_output(plan, places, weight, bias, [read(piece.src) for piece in pieces])


def _output_chunks(plan: Plan) -> tuple[tuple[int, ...], ...]:
    """The output's chunks: the lengths of the tiles' ranges along each dim."""
    ranges = [sorted({(t.out.lo[d], t.out.hi[d]) for t in plan.tiles}) for d in range(len(plan.splits))]
    return tuple(tuple(b - a for a, b in rs) for rs in ranges)


def tile_output(plan: Plan, places: list, weight: np.ndarray, bias: np.ndarray | None,
                strips: list[np.ndarray]) -> np.ndarray:
    """The output box of ``plan``'s one tile, as a numpy array, from the strips of input
    its pieces read: ``places[i]`` = (piece, where in the piece's source box strips[i] goes)."""
    (tile,) = plan.tiles
    dtype = weight.dtype
    window = blank(tile, np.empty(0, dtype))
    flipped: dict[int, np.ndarray] = {}  # the pieces read reversed or repeated, assembled first
    for strip, (p, where) in zip(strips, places):
        piece = tile.pieces[p]
        if all(s == 1 for s in piece.steps):  # straight into its place in the window
            window[piece.dst.slices()][where] = strip
        else:
            flipped.setdefault(p, np.empty(piece.src.shape, dtype))[where] = strip
    for p, source in flipped.items():
        window[tile.pieces[p].dst.slices()] = piece_data(source, tile.pieces[p])
    c0, c1 = plan.weight_box(tile)
    w, b = weight[c0:c1], None if bias is None else bias[c0:c1]
    if backends.get(plan.backend).computes_arrays(plan.spec):
        out = np.empty(tile.out.shape, dtype)
        compute_tile_array(plan, tile, window, w, b, out, 1)
        return out
    import torch

    from haloconv.compute import kernels

    wt = torch.from_numpy(np.ascontiguousarray(w))
    bt = None if b is None else torch.from_numpy(np.ascontiguousarray(b))
    choice = kernels.select_backend(plan.spec, torch.empty(0, dtype=wt.dtype), torch.from_numpy(weight), bt)
    out = torch.empty(tile.out.shape, dtype=wt.dtype)
    compute_tile(plan, tile, torch.from_numpy(window), wt, bt, choice, out=out)
    return out.numpy()

