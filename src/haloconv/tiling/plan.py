"""Partition strategies -> Plan: who computes which output box, with which input.

A Plan is a frozen value computed from shapes alone (no torch, no communication).  For
each worker it lists its output box, the input box it owns, the input it needs (owned +
halo, in source coordinates, possibly reaching into the padding), the window it hands to
the conv backend, and every piece of that window with the worker that owns the data.
Engines only move the boxes listed here.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from haloconv import text
from haloconv.tiling import geometry
from haloconv.tiling.boxes import Box, Piece, Tile
from haloconv.tiling.messages import Message, Traffic, is_contiguous_run, traffic_of, transfer_chunks
from haloconv.tiling.partition import (
    Partition,
    _axis_names,
    _factorizations,
    split_extents,
)
from haloconv.tiling.spec import ConvSpec

OWNERSHIPS = ("aligned", "even")
EXCHANGES = ("neighbours", "master")


@dataclass(frozen=True)
class Plan:
    """The complete, communication-free description of a partitioned convolution.

    ``ownership``: 'aligned' (a tile owns the input its first outputs start on: the halo
    is one-sided) or 'even' (the input split like the output: consecutive layers chain
    their shards).  ``exchange``: 'neighbours' (the master scatters owned boxes, workers
    swap halos) or 'master' (the master sends each worker its whole window; no exchange).
    Made by haloconv.plan; run by haloconv.execute.

    Attributes
    ----------
    spec : ConvSpec
    partition : str
    splits : tuple of int
        Split counts over (N, C_out, *spatial).
    workers : int
    tiles : tuple of Tile
        One per worker (or more, for a dynamic schedule).
    backend : str
        The tile compute.

    Examples
    --------
    >>> import haloconv
    >>> p = haloconv.plan((2, 8, 64, 64), (16, 8, 3, 3), padding=1, partition="batch", workers=2)
    >>> p.splits, [t.out.shape for t in p.tiles], p.halo_elements
    ((2, 1, 1, 1), [(1, 16, 64, 64), (1, 16, 64, 64)], 0)
    """

    spec: ConvSpec
    partition: str
    splits: tuple[int, ...]  # split counts over (N, C_out, *spatial)
    workers: int
    # a tuple, or (a grid of equal workers) a GridTiles that makes each tile when first
    # asked for; equal either way tile for tile, and left out of the hash
    tiles: Sequence[Tile] = field(hash=False)
    weights: tuple[float, ...] | None = None
    ownership: str = "aligned"
    exchange: str = "neighbours"
    pipeline: int = 1  # exchange='master': a worker's window travels and computes in this many parts
    backend: str = "torch"  # how every tile is computed: a name in compute/backends

    def subtiles(self, tile: Tile, master: int = 0) -> tuple[Tile, ...]:
        """The parts a worker's tile is sent and computed in (exchange='master', pipeline>1):
        the worker starts on the first part while the rest are in flight.  Each part is a
        tile of its own (exact like any tile); the master's own tile is never split."""
        if self.pipeline <= 1 or self.exchange != "master" or tile.rank == master:
            return (tile,)
        cache = self.__dict__.setdefault("_subtiles", {})
        if tile.rank not in cache:
            cache[tile.rank] = _subtiles(self, tile)
        return cache[tile.rank]

    def overlap_parts(self, tile: Tile) -> tuple[Tile | None, tuple[Tile, ...]]:
        """(interior, borders): ``tile`` cut so that its halo can travel while it computes.

        The interior computes the outputs whose windows read only the tile's own input (no
        halo, and outside the input only zero padding); the borders, slabs peeled off axis
        by axis, the rest, once the halos are in.  Each part is a tile of its own (exact
        like any tile); together they compute the tile's output box once.  (None, (tile,))
        when no output can do without a halo."""
        cache = self.__dict__.setdefault("_overlap", {})
        if tile.rank not in cache:
            cache[tile.rank] = _overlap_parts(self, tile)
        return cache[tile.rank]

    def tile_of(self, rank: int) -> Tile | None:
        """The tile worker ``rank`` computes, or None when it is idle."""
        return self.tiles[rank] if 0 <= rank < len(self.tiles) else None

    def weight_box(self, tile: Tile) -> tuple[int, int]:
        """Output channels [c0, c1) of the weight (and bias) a tile uses."""
        return tile.out.lo[1], tile.out.hi[1]

    def messages(self, itemsize: int, master: int = 0, send_weights: bool = True) -> list[Message]:
        """Every message the engines send, in the order the master posts them per worker.

        weights: the master sends each worker its filters (+ bias); scatter: its owned box
        (or, with exchange='master', every piece of its window, part by part); halo: owners
        send the pieces their neighbours need; gather: each worker returns its output box
        (part by part).  The master's own tile moves nothing."""
        s = self.spec
        per_filter = s.filter_elements
        out: list[Message] = []

        def move_box(phase: str, src: int, dst: int, box: Box, shape: Sequence[int], part: int = 0) -> None:
            chunks = transfer_chunks(box, shape, itemsize)
            packed = len(chunks) == 1 and not is_contiguous_run(box, shape)
            out.extend(Message(phase, src, dst, c.volume * itemsize, part, packed) for c in chunks)

        for t in self.tiles:
            if t.rank == master:
                continue
            parts = self.subtiles(t, master)
            if send_weights:
                c0, c1 = self.weight_box(t)
                out.append(Message("weights", master, t.rank, (c1 - c0) * per_filter * itemsize))
                if s.has_bias:
                    out.append(Message("weights", master, t.rank, (c1 - c0) * itemsize))
            if self.exchange == "master":
                for k, st in enumerate(parts):
                    for p in st.pieces:
                        move_box("scatter", master, t.rank, p.src, s.input_shape, k)
            else:
                move_box("scatter", master, t.rank, t.owned, s.input_shape)
            for k, st in enumerate(parts):
                move_box("gather", t.rank, master, st.out, s.output_shape, k)
        if self.exchange != "master":
            for t in self.tiles:
                out.extend(Message("halo", p.owner, t.rank, p.elements * itemsize)
                           for p in t.halo_pieces if p.owner != t.rank)
        return out

    def message_totals(self, itemsize: int, master: int = 0) -> tuple[int, int]:
        """(halo bytes, all bytes) of ``messages(itemsize, master)``, each message once.  A
        grid's (GridTiles, halos between neighbours) counted per axis, without making its
        tiles: the halo (grid_halo), every worker's owned box and output box and its filters."""
        if isinstance(self.tiles, GridTiles) and self.exchange != "master" and 0 <= master < len(self.tiles):
            s = self.spec
            out0, owned0 = self.tiles.shell(master)[:2]
            per_channel = s.filter_elements + (1 if s.has_bias else 0)
            # the channel blocks cover the output channels, each in len(tiles) / splits[1]
            # tiles; the master sends filters to all but itself
            channels = s.out_channels * (len(self.tiles) // self.splits[1]) - (out0.hi[1] - out0.lo[1])
            halo = self.halo_elements
            rest = (channels * per_channel + self.tiles.owned_elements() - owned0.volume
                    + math.prod(s.output_shape) - out0.volume)
            return halo * itemsize, (halo + rest) * itemsize
        msgs = self.messages(itemsize, master)
        return sum(m.nbytes for m in msgs if m.phase == "halo"), sum(m.nbytes for m in msgs)

    def traffic(self, itemsize: int, master: int = 0, send_weights: bool = True) -> dict[int, dict[str, Traffic]]:
        """Predicted bytes and messages per worker and phase (exactly what engines move;
        see ``messages``)."""
        return traffic_of(self.messages(itemsize, master, send_weights), self.workers)

    @property
    def idle_workers(self) -> int:
        return self.workers - len(self.tiles)

    @property
    def halo_elements(self) -> int:
        if isinstance(self.tiles, GridTiles):  # per axis, without making the tiles
            return self.tiles.halo_elements()
        return sum(t.halo_elements for t in self.tiles)

    def halo_elements_per_worker(self) -> list[int]:
        per = [0] * self.workers
        for t in self.tiles:
            per[t.rank] = t.halo_elements
        return per

    @property
    def halo_messages(self) -> int:
        return sum(len(t.halo_pieces) for t in self.tiles)

    def halo_ratio(self) -> float:
        """Halo elements / owned elements over all tiles (0 = no halo)."""
        if isinstance(self.tiles, GridTiles):
            owned = self.tiles.owned_elements()
        else:
            owned = sum(t.owned.volume for t in self.tiles)
        return self.halo_elements / owned if owned else 0.0

    def summary(self) -> str:
        """The plan in one line: partition, splits, tiles, workers, halo, backend."""
        s = self.spec
        idle = f" ({self.idle_workers} idle)" if self.idle_workers else ""
        return (f"{self.partition} {'x'.join(map(str, self.splits))} over (N, C_out, "
                f"{', '.join(_axis_names(s.ndim))}): {len(self.tiles)} tiles on {self.workers} workers{idle}, "
                f"halo {100 * self.halo_ratio():.2f}% of the input, backend {self.backend}")

    def __str__(self) -> str:
        s = self.spec
        head = (
            f"Plan: conv{s.ndim}d x{list(s.input_shape)} * w{list(s.weight_shape)} -> "
            f"y{list(s.output_shape)}  stride={s.stride} dilation={s.dilation} "
            f"padding={list(zip(s.pad_lo, s.pad_hi))} mode={s.padding_mode} groups={s.groups}\n"
            f"partition={self.partition} splits(N,C_out,{','.join(_axis_names(s.ndim))})="
            f"{self.splits} workers={self.workers} tiles={len(self.tiles)} ownership={self.ownership} "
            f"exchange={self.exchange} backend={self.backend}"
            + (f" (idle workers: {self.idle_workers})" if self.idle_workers else "")
            + (f" weights={list(self.weights)}" if self.weights else "")
        )
        cols = ("rank", "output box", "tile shape", "owned input", "needed input (halo)", "halo elems", "from")
        rows = [
            (
                str(t.rank),
                str(t.out),
                "x".join(map(str, t.out.shape)),
                str(t.owned),
                str(t.needed),
                f"{t.halo_elements:,}",
                ",".join(map(str, t.halo_sources)) or "-",
            )
            for t in self.tiles
        ]
        lines = [head, text.table(cols, rows)]
        lines.append(
            f"total halo: {self.halo_elements:,} elements in {self.halo_messages} pieces "
            f"({100 * self.halo_ratio():.2f}% of the owned input)"
        )
        return "\n".join(lines)


def resolve_splits(
    spec: ConvSpec, partition: str | Sequence[int] | Partition, workers: int, ownership: str = "aligned"
) -> tuple[str, tuple[int, ...]]:
    """(name, split counts over (N, C_out units, *spatial)) of ``partition`` for a plan of
    ``spec`` on ``workers`` workers (see Partition.counts); 'grid' picks the factorisation
    with the least halo."""
    return Partition.of(partition).counts(spec, workers, lambda s, w: _best_grid(s, w, ownership))


def _best_grid(spec: ConvSpec, workers: int, ownership: str = "aligned") -> tuple[int, ...]:
    """Spatial factorisation with the least halo volume (then the most even tiles)."""
    out_sp = spec.out_spatial
    limit = [min(o, n) if ownership == "even" else o for o, n in zip(out_sp, spec.spatial)]
    for w in range(workers, 0, -1):
        cands = [f for f in _factorizations(w, spec.ndim) if all(c <= e for c, e in zip(f, limit))]
        if not cands:
            continue

        def key(f: tuple[int, ...]) -> tuple:
            halo, biggest = grid_halo(spec, (1, 1, *f), ownership)
            # fewer splits of the inner (contiguous) axes on ties: row bands copy less
            return (halo, biggest, tuple(-c for c in f))

        return (1, 1, *min(cands, key=key))
    raise AssertionError("unreachable: a 1x...x1 grid always fits")


def _axis_ranges(spec: ConvSpec, counts: Sequence[int], ownership: str) -> list[list[tuple]]:
    """Per dim over (N, C_out units, *spatial), the (output range, input range) of each of
    its ``counts`` parts, as build splits them for equal workers (tile_ranges, one axis at
    a time); the input range None for aligned ownership (Axis.owned gives it)."""
    out_ext = split_extents(spec)
    if ownership == "even":
        in_ext = (*out_ext[:2], *spec.spatial)
        return [list(zip(geometry.split_extent(o, c, None, True), geometry.split_extent(i, c, None, True)))
                for o, i, c in zip(out_ext, in_ext, counts)]
    return [[(r, None) for r in geometry.split_extent(o, c)] for o, c in zip(out_ext, counts)]


def grid_halo(spec: ConvSpec, counts: Sequence[int], ownership: str = "aligned") -> tuple[int, int]:
    """(halo elements, the biggest tile's output volume) of ``build(spec, counts, ...)`` for
    equal workers, without building it.  A tile reads from each owner the product, over
    the spatial axes, of what its window's runs on that axis take from the owner's
    interval, so the elements it reads from all owners are the product of per-axis sums,
    its own the product of its own interval's parts, and the sums over the grid's tiles
    factor by axis too (tile_shapes' reasoning; tests check it against built plans)."""
    ranges = _axis_ranges(spec, counts, ownership)
    if any(a == b for rs in ranges for (a, b), _ in rs):  # empty tiles (even ownership): built ones say
        plan = build(spec, counts, "grid", math.prod(counts), ownership=ownership)
        return plan.halo_elements, max(t.out.volume for t in plan.tiles)
    axes = [spec.axis(i) for i in range(spec.ndim)]
    align = geometry.compute_align(spec.ndim)
    all_reads, own_reads = 1, 1  # sums over the tiles of the per-axis factors
    for ax, rs in zip(axes, ranges[2:]):
        owned = [ax.owned(a, b) if i is None else i for (a, b), i in rs]
        held = [j for j, (o_lo, o_hi) in enumerate(owned) if o_lo < o_hi]  # in order, disjoint: bisected
        lows, highs = [owned[j][0] for j in held], [owned[j][1] for j in held]
        reads_all, reads_own = 0, 0
        for k, ((a, b), _) in enumerate(rs):
            lo, hi, _ = ax.compute_window(a, b, align)
            n_lo, n_hi = ax.needed(a, b)
            for r in ax.runs(lo, hi):
                if r.src is None:
                    continue
                r = r.clip(n_lo - lo, n_hi - lo)
                if r is None:
                    continue
                a_src, b_src = r.src_range
                for j in held[bisect.bisect_right(highs, a_src):bisect.bisect_left(lows, b_src)]:
                    part = r.restrict(*owned[j])
                    if part is not None:  # what moves is the source (Piece.elements): a replicated index once
                        lo_src, hi_src = part.src_range
                        reads_all += hi_src - lo_src
                        reads_own += hi_src - lo_src if j == k else 0
        all_reads, own_reads = all_reads * reads_all, own_reads * reads_own
    # per tile the N and C factors: its samples and its input channels (its own channel
    # block's owners only, so the channel axis adds no halo)
    halo = spec.batch * _input_channels(spec, ranges[1]) * (all_reads - own_reads)
    cog = spec.out_channels // spec.groups if spec.groups > 1 else 1
    biggest = math.prod(max(b - a for (a, b), _ in rs) for rs in ranges) * cog
    return halo, biggest


def _input_channels(spec: ConvSpec, channel_ranges: Sequence[tuple]) -> int:
    """The input channels the tiles of one sample and spatial box read, summed over the
    channel blocks ``channel_ranges`` ((units range, _) per block, as _axis_ranges gives)."""
    return sum(c1 - c0 for (_, (c0, c1), _) in (spec.unit_channels(*r) for r, _ in channel_ranges))


def tile_ranges(
    extents: Sequence[Sequence[int]], counts: Sequence[int], weights: Sequence[float] | None,
    block: Sequence[int | None] | None = None, allow_empty: bool = False,
) -> list[list[tuple[tuple[int, int], ...]]]:
    """Ranges per tile, row-major over the split dims, for each of several extent sets
    (output extents, and input extents for even ownership) split alike.  With weights,
    each dim is split by the summed weights of the workers in each slab, recursively, so
    unequal workers get proportional tiles (then tiles need not form a strict grid).
    ``block``: per dim, a fixed tile size (boundaries at its multiples) instead of counts.
    ``allow_empty``: a dim may be split into more parts than it has indices (empty tiles)."""
    result: list[list[tuple[tuple[int, int], ...]]] = []
    dims = len(counts)

    def rec(dim: int, prefix: list[list[tuple[int, int]]], ws: Sequence[float] | None) -> None:
        if dim == dims:
            result.append([tuple(p) for p in prefix])
            return
        c = counts[dim]
        per = math.prod(counts[dim + 1 :])
        slab_w = [sum(ws[i * per : (i + 1) * per]) for i in range(c)] if ws is not None else None
        if block is not None and block[dim] is not None:
            splits = [geometry.block_extent(ext[dim], block[dim]) for ext in extents]
        else:
            splits = [geometry.split_extent(ext[dim], c, slab_w, allow_empty) for ext in extents]
        for i in range(c):
            rec(
                dim + 1,
                [p + [sp[i]] for p, sp in zip(prefix, splits)],
                ws[i * per : (i + 1) * per] if ws is not None else None,
            )

    rec(0, [[] for _ in extents], weights)
    return result


def _subtiles(plan: Plan, tile: Tile) -> tuple[Tile, ...]:
    """Split ``tile`` into plan.pipeline parts along its outermost splittable spatial axis."""
    spec = plan.spec
    axes = [spec.axis(i) for i in range(spec.ndim)]
    split_c = plan.splits[1] > 1
    cog = spec.out_channels // spec.groups

    def units(c0: int, c1: int) -> tuple[int, int]:
        return (c0 // cog, c1 // cog) if spec.groups > 1 else (c0, c1)

    shells = [
        (t.out, t.owned, t.needed, t.window, t.first, t.groups,
         units(t.out.lo[1], t.out.hi[1]) if split_c else (0, 0))
        for t in plan.tiles
    ]
    ranges = [(l, h) for l, h in zip(tile.out.lo, tile.out.hi)]
    ranges[1] = units(*ranges[1])
    ax = next((d for d in range(2, len(ranges)) if ranges[d][1] - ranges[d][0] >= 2), None)
    if ax is None:
        return (tile,)
    a, b = ranges[ax]
    owned_sp = list(zip(tile.owned.lo[2:], tile.owned.hi[2:]))
    parts = []
    for u, v in geometry.split_extent(b - a, min(plan.pipeline, b - a)):
        out_r = list(ranges)
        out_r[ax] = (a + u, a + v)
        shell = tile_shell(spec, axes, out_r, owned_sp, split_c)
        parts.append(make_tile(spec, axes, tile.rank, shell, shells))
    return tuple(parts)


def _interior(ax: geometry.Axis, a: int, b: int, own_lo: int, own_hi: int, padding: bool) -> tuple[int, int]:
    """The outputs of [a, b) on one axis whose inputs lie in [own_lo, own_hi), or in the
    padding when ``padding`` (zeros, read from no one; or mirrored or wrapped input the
    caller checks is this tile's own): a range, empty when none."""
    def inside(o: int) -> tuple[bool, bool]:
        lo, hi = ax.needed(o, o + 1)
        if padding:
            lo, hi = max(lo, 0), min(hi, ax.length)
        return lo >= own_lo, hi <= own_hi

    lo = next((o for o in range(a, b) if inside(o)[0]), b)  # needed grows with o: the first that fits below
    hi = next((o + 1 for o in range(b - 1, lo - 1, -1) if inside(o)[1]), lo)  # and the last that fits above
    return lo, max(lo, hi)


def _overlap_parts(plan: Plan, tile: Tile) -> tuple[Tile | None, tuple[Tile, ...]]:
    spec = plan.spec
    if tile.out.volume == 0 or not tile.halo_pieces:
        return None, (tile,)
    axes = [spec.axis(i) for i in range(spec.ndim)]
    split_c = plan.splits[1] > 1
    cog = spec.out_channels // spec.groups

    def units(c0: int, c1: int) -> tuple[int, int]:
        return (c0 // cog, c1 // cog) if spec.groups > 1 else (c0, c1)

    owned_sp = list(zip(tile.owned.lo[2:], tile.owned.hi[2:]))
    full = [(l, h) for l, h in zip(tile.out.lo, tile.out.hi)]
    full[1] = units(*full[1])
    shells = [
        (t.out, t.owned, t.needed, t.window, t.first, t.groups,
         units(t.out.lo[1], t.out.hi[1]) if split_c else (0, 0))
        for t in plan.tiles
    ]

    def part(ranges) -> Tile:
        return make_tile(spec, axes, tile.rank, tile_shell(spec, axes, ranges, owned_sp, split_c), shells)

    # the outputs that read no padding first: their window is a view of the shard (no
    # copy); the padding rows, read by a slab or two, wait for the halos.  Else (a thin
    # tile) the padding read as its own data (zeros; mirrored or wrapped input it owns).
    for padding in (False, True):
        inner = [_interior(ax, *full[d + 2], *owned_sp[d], padding) for d, ax in enumerate(axes)]
        if any(lo >= hi for lo, hi in inner):
            continue
        borders, rest = [], list(full)  # peel a slab below and above the interior, axis by axis
        for d, (lo, hi) in enumerate(inner, start=2):
            for r in ((rest[d][0], lo), (hi, rest[d][1])):
                if r[0] < r[1]:
                    borders.append(part([*rest[:d], r, *rest[d + 1:]]))
            rest[d] = (lo, hi)
        interior = part(rest)
        if all(p.owner == tile.rank for p in interior.pieces):
            return interior, tuple(borders)
    return None, (tile,)


def tile_shell(spec: ConvSpec, axes, out_r, owned_sp, split_c: bool) -> tuple:
    """(out, owned, needed, window, first, groups, c_key) of the tile computing ``out_r``
    (ranges over N, C_out units, *spatial) and owning ``owned_sp`` of the input."""
    (n0, n1), (u0, u1), *sp = out_r
    c_out, c_in, groups = spec.unit_channels(u0, u1)
    if any(a == b for a, b in out_r):  # computes nothing (even ownership): reads nothing
        needed_sp = [(a, a) for a, _ in sp]
        comp = [(a, a, 0) for a, _ in sp]
    else:
        needed_sp = [ax.needed(a, b) for ax, (a, b) in zip(axes, sp)]
        comp = [ax.compute_window(a, b, geometry.compute_align(spec.ndim)) for ax, (a, b) in zip(axes, sp)]
    out = Box((n0, c_out[0], *(a for a, _ in sp)), (n1, c_out[1], *(b for _, b in sp)))
    owned = Box((n0, c_in[0], *(l for l, _ in owned_sp)), (n1, c_in[1], *(h for _, h in owned_sp)))
    needed = Box((n0, c_in[0], *(l for l, _ in needed_sp)), (n1, c_in[1], *(h for _, h in needed_sp)))
    window = Box((n0, c_in[0], *(c[0] for c in comp)), (n1, c_in[1], *(c[1] for c in comp)))
    # tiles with the same channel block partition the input among themselves
    c_key = (u0, u1) if split_c else (0, 0)
    return out, owned, needed, window, tuple(c[2] for c in comp), groups, c_key


def _owner_index(shells: Sequence[tuple]) -> dict:
    """Per channel-block key, how to find the owners a window reads from: a _GridOwners
    where the owned boxes form a grid (a bisection per axis: plans of thousands of tiles
    cost no more per tile than small ones), else (ranks, lo, hi) arrays of the owned boxes
    for a vectorised search (unequal workers' tiles need not form a grid)."""
    index: dict = {}
    for rk, sh in enumerate(shells):
        index.setdefault(sh[6], []).append((rk, sh[1]))
    return {key: _GridOwners.of(v) or (np.array([rk for rk, _ in v]), np.array([b.lo for _, b in v]),
                                       np.array([b.hi for _, b in v]))
            for key, v in index.items()}


class _GridOwners:
    """Owned boxes that form a grid: per axis, disjoint intervals; every box the product
    of one interval per axis.  Boxes empty on some axis own nothing and are left out."""

    def __init__(self, lows: list[list[int]], highs: list[list[int]], rank_of: dict[tuple, int]):
        self.lows, self.highs, self.rank_of = lows, highs, rank_of

    @classmethod
    def of(cls, boxes: Sequence[tuple[int, Box]]) -> _GridOwners | None:
        boxes = [(rk, b) for rk, b in boxes if all(lo < hi for lo, hi in zip(b.lo, b.hi))]
        dims = len(boxes[0][1].lo) if boxes else 0
        intervals = [sorted({(b.lo[d], b.hi[d]) for _, b in boxes}) for d in range(dims)]
        if any(h > nxt[0] for iv in intervals for (_, h), nxt in zip(iv, iv[1:])):
            return None  # intervals that overlap on an axis: not a grid
        where = [{v: i for i, v in enumerate(iv)} for iv in intervals]
        rank_of = {tuple(w[(b.lo[d], b.hi[d])] for d, w in enumerate(where)): rk for rk, b in boxes}
        if len(rank_of) != len(boxes) or len(boxes) != math.prod(len(iv) for iv in intervals):
            return None
        return cls([[lo for lo, _ in iv] for iv in intervals], [[hi for _, hi in iv] for iv in intervals], rank_of)

    def owners(self, src_lo: Sequence[int], src_hi: Sequence[int]) -> list[int]:
        """The ranks whose boxes overlap [src_lo, src_hi), in rank order."""
        per_axis = []
        for lows, highs, a, b in zip(self.lows, self.highs, src_lo, src_hi):
            first = bisect.bisect_right(highs, a)  # the first interval ending past a
            last = bisect.bisect_left(lows, b)  # the intervals starting before b
            if first >= last:
                return []
            per_axis.append(range(first, last))
        return sorted(self.rank_of[k] for k in itertools.product(*per_axis))


def make_tile(spec: ConvSpec, axes, rank: int, shell: tuple, shells: Sequence[tuple],
              index: dict | None = None) -> Tile:
    """A Tile from its shell, with the pieces of its window and their owners."""
    out, owned, needed, window, first, groups, c_key = shell
    if out.volume == 0:
        return Tile(rank, out, owned, needed, window, first, groups, (), spec.padding_value,
                    _input_spatial=spec.spatial)
    per_dim: list[list[geometry.Run]] = [
        [geometry.Run(0, window.hi[0] - window.lo[0], window.lo[0], 1)],
        [geometry.Run(0, window.hi[1] - window.lo[1], window.lo[1], 1)],
    ]
    for i, ax in enumerate(axes):
        lo_n, hi_n = needed.lo[i + 2], needed.hi[i + 2]
        kept = []
        for r in ax.runs(window.lo[i + 2], window.hi[i + 2]):
            if r.src is None:
                continue
            # window positions outside the needed range (alignment, thin-tile growth)
            # are read only by dropped outputs: left zero, never fetched
            r2 = r.clip(lo_n - window.lo[i + 2], hi_n - window.lo[i + 2])
            if r2 is not None:
                kept.append(r2)
        per_dim.append(kept)
    index = index if index is not None else _owner_index(shells)
    owners = index[c_key]
    pieces = []
    for combo in itertools.product(*per_dim):
        src_lo = [r.src_range[0] for r in combo]
        src_hi = [r.src_range[1] for r in combo]
        if isinstance(owners, _GridOwners):
            hits = owners.owners(src_lo, src_hi)
        else:
            ranks, lo_arr, hi_arr = owners
            hits = (int(r) for r in ranks[np.all((lo_arr < np.array(src_hi)) & (hi_arr > np.array(src_lo)), axis=1)])
        # own data first, then neighbours by rank
        for rk in sorted(hits, key=lambda r: (r != rank, r)):
            obox = shells[rk][1]
            parts = [r.restrict(lo, hi) for r, lo, hi in zip(combo, obox.lo, obox.hi)]
            if any(p is None for p in parts):
                continue
            src = Box(tuple(p.src_range[0] for p in parts), tuple(p.src_range[1] for p in parts))
            dst = Box(tuple(p.dst for p in parts), tuple(p.dst + p.length for p in parts))
            pieces.append(Piece(rk, src, dst, tuple(p.step for p in parts)))
    return Tile(rank, out, owned, needed, window, first, groups, tuple(pieces), spec.padding_value,
                _input_spatial=spec.spatial)


def build(
    spec: ConvSpec,
    counts: Sequence[int],
    partition: str,
    workers: int,
    weights: Sequence[float] | None = None,
    ownership: str = "aligned",
    exchange: str = "neighbours",
    pipeline: int = 1,
    backend: str = "torch",
    block: Sequence[int | None] | None = None,
) -> Plan:
    """Build the Plan for explicit split counts over (N, C_out units, *spatial).

    ``block`` (aligned ownership, no weights): per dim over (N, C_out units, *spatial), a
    fixed tile size in place of a count (None: split by the count), e.g. output row bands
    of 256 rows whose borders fall on the chunks of a chunked output file."""
    out_ext = split_extents(spec)
    if block is not None:
        if len(block) != len(out_ext) or weights is not None or ownership != "aligned":
            raise ValueError("block needs one entry per dim, no weights and aligned ownership")
        counts = [c if b is None else -(-e // b) for c, b, e in zip(counts, block, out_ext)]
    ntiles = math.prod(counts)
    lazy = GridTiles.of(spec, counts, ownership) if weights is None and block is None else None
    if lazy is not None:
        return Plan(spec=spec, partition=partition, splits=tuple(counts), workers=workers, tiles=lazy,
                    ownership=ownership, exchange=exchange, pipeline=pipeline, backend=backend)
    tile_w = list(weights[:ntiles]) if weights is not None else None
    if ownership == "even":
        # the input split like the output, with empty tiles where an axis has fewer indices
        # than parts (haloconv.nn: a downsampled activation thinner than the ranks)
        in_ext = (*out_ext[:2], *spec.spatial)
        ranges = tile_ranges([out_ext, in_ext], counts, tile_w, allow_empty=True)
    else:
        ranges = [[r, None] for (r,) in tile_ranges([out_ext], counts, tile_w, block)]
    axes = [spec.axis(i) for i in range(spec.ndim)]
    split_c = counts[1] > 1
    shells = []
    for out_r, in_r in ranges:
        sp = out_r[2:]
        if in_r is None:  # aligned: a border sits where the next tile's window starts
            owned_sp = [ax.owned(a, b) for ax, (a, b) in zip(axes, sp)]
        else:  # even: the input split like the output, so layers chain without moving data
            owned_sp = list(in_r[2:])
        shells.append(tile_shell(spec, axes, out_r, owned_sp, split_c))
    index = _owner_index(shells)
    tiles = tuple(make_tile(spec, axes, rank, shell, shells, index) for rank, shell in enumerate(shells))
    return Plan(
        spec=spec,
        partition=partition,
        splits=tuple(counts),
        workers=workers,
        tiles=tiles,
        weights=tuple(float(w) for w in weights) if weights is not None else None,
        ownership=ownership,
        exchange=exchange,
        pipeline=pipeline,
        backend=backend,
    )


class GridTiles(Sequence):
    """The tiles of ``build(spec, counts, ...)`` for equal workers whose tiles form a grid:
    each Tile made when first asked for (then kept), from the per-axis splits, instead of
    all of them when the plan is made.  A plan of 65,536 tiles is made in the time of its
    axes, priced from its tiles' shapes (tile_shapes) and its halo counted per axis
    (grid_halo); a worker builds only the tile it computes.  Equal, tile for tile, to the
    tiles build makes one by one (build_on_ranges), which tests check."""

    def __init__(self, spec: ConvSpec, counts: Sequence[int], ownership: str):
        self.spec, self.counts, self.ownership = spec, tuple(counts), ownership
        self._ranges = _axis_ranges(spec, self.counts, ownership)
        self._axes = [spec.axis(i) for i in range(spec.ndim)]
        # per spatial axis, the input interval each part owns
        self._owned = [[ax.owned(a, b) if i is None else i for (a, b), i in rs]
                       for ax, rs in zip(self._axes, self._ranges[2:])]
        self._strides = [math.prod(self.counts[d + 1:]) for d in range(len(self.counts))]
        self._shells: dict[int, tuple] = {}
        self._made: dict[int, Tile] = {}
        self._index = {key: _RowMajorOwners(self, u) for u, key in enumerate(self._channel_keys())}
        self._by_rank = _Shells(self)  # what make_tile reads an owner's boxes from

    @classmethod
    def of(cls, spec: ConvSpec, counts: Sequence[int], ownership: str) -> GridTiles | None:
        """GridTiles, or None where a part is empty on some axis (even ownership of an
        axis thinner than its parts: the tiles are built one by one)."""
        grid = cls(spec, counts, ownership)
        if any(a == b for rs in grid._ranges for (a, b), _ in rs) or any(
                lo >= hi for own in grid._owned for lo, hi in own):
            return None
        return grid

    def _channel_keys(self) -> list[tuple[int, int]]:
        split_c = self.counts[1] > 1
        return [r if split_c else (0, 0) for r, _ in self._ranges[1]]

    def _index_of(self, rank: int) -> list[int]:
        return [rank // st % c for st, c in zip(self._strides, self.counts)]

    def shell(self, rank: int) -> tuple:
        """tile_shell of tile ``rank`` (its boxes; what make_tile reads of its owners)."""
        sh = self._shells.get(rank)
        if sh is None:
            idx = self._index_of(rank)
            out_r = [self._ranges[d][i][0] for d, i in enumerate(idx)]
            owned_sp = [own[i] for own, i in zip(self._owned, idx[2:])]
            sh = self._shells[rank] = tile_shell(self.spec, self._axes, out_r, owned_sp, self.counts[1] > 1)
        return sh

    def __len__(self) -> int:
        return math.prod(self.counts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("tile index out of range")
        tile = self._made.get(i)
        if tile is None:
            tile = self._made[i] = make_tile(self.spec, self._axes, i, self.shell(i), self._by_rank, self._index)
        return tile

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GridTiles):
            return (self.spec, self.counts, self.ownership) == (other.spec, other.counts, other.ownership)
        if isinstance(other, (tuple, list)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # equal to a tuple of its tiles: no hash of its own (Plan leaves tiles out of its hash)

    def __reduce__(self):  # a worker is sent the recipe, and makes the tile it computes
        return GridTiles, (self.spec, self.counts, self.ownership)

    def __repr__(self) -> str:
        return f"GridTiles({len(self)} tiles, splits {self.counts}, {self.ownership})"

    def halo_elements(self) -> int:
        return grid_halo(self.spec, self.counts, self.ownership)[0]

    def owned_elements(self) -> int:
        """The owned input's elements summed over the tiles (Plan.halo_ratio), per axis."""
        n = sum(b - a for (a, b), _ in self._ranges[0])
        return n * _input_channels(self.spec, self._ranges[1]) * math.prod(
            sum(hi - lo for lo, hi in own) for own in self._owned)


class _Shells:
    """A grid's shells by rank, made as make_tile asks for an owner's."""

    def __init__(self, grid: GridTiles):
        self.grid = grid

    def __getitem__(self, rank: int) -> tuple:
        return self.grid.shell(rank)


class _RowMajorOwners(_GridOwners):
    """_GridOwners of a GridTiles' channel block ``u``: per dim of the input boxes (N, C_in,
    *spatial) the owned intervals, a tile's rank found from its interval per dim (row-major
    over the splits) instead of a table of every tile."""

    def __init__(self, grid: GridTiles, u: int):
        units, _ = grid._ranges[1][u]
        _, c_in, _ = grid.spec.unit_channels(*units)
        intervals = [[r for r, _ in grid._ranges[0]], [c_in], *grid._owned]
        super().__init__([[lo for lo, _ in iv] for iv in intervals], [[hi for _, hi in iv] for iv in intervals],
                         _RankOf(grid._strides, u))


class _RankOf:
    """The rank of the tile at interval indices (n, 0, *spatial) of channel block ``u``."""

    def __init__(self, strides: Sequence[int], u: int):
        self.strides, self.u = strides, u

    def __getitem__(self, key: tuple[int, ...]) -> int:
        n, _, *sp = key
        return n * self.strides[0] + self.u * self.strides[1] + sum(i * st for i, st in zip(sp, self.strides[2:]))


@dataclass(frozen=True)
class TileShape:
    """``count`` tiles of one shape, as build makes them (Tile's boxes' shapes); ``view``:
    their window lies inside the input (Tile.window_is_view)."""

    count: int
    out: tuple[int, ...]
    owned: tuple[int, ...]
    window: tuple[int, ...]
    groups: int
    view: bool


def tile_shapes(spec: ConvSpec, counts: Sequence[int], ownership: str = "aligned") -> list[TileShape]:
    """The tiles ``build(spec, counts, ..., ownership=ownership)`` makes for equal workers,
    by shape, without making them: a grid's tiles take one range per axis, and the shapes
    on an axis depend on its range alone, so the shapes are the products of each axis's
    few distinct ones (the cost model prices a candidate of thousands of tiles in the time
    of a few).  Equal, shape for shape and count for count, to the built plan's tiles."""
    ranges = _axis_ranges(spec, counts, ownership)
    axes = [spec.axis(i) for i in range(spec.ndim)]
    align = geometry.compute_align(spec.ndim)

    def channel(u0: int, u1: int) -> tuple:  # (out channels, in channels, groups) of units [u0, u1)
        (o0, o1), (i0, i1), groups = spec.unit_channels(u0, u1)
        return o1 - o0, i1 - i0, groups

    def spatial(ax, out_r, in_r) -> tuple:  # (out, owned, (window, inside), (window, inside) of an empty tile)
        a, b = out_r
        lo, hi = ax.owned(a, b) if in_r is None else in_r
        c0, c1, _ = ax.compute_window(a, b, align)
        return b - a, hi - lo, (c1 - c0, 0 <= c0 and c1 <= ax.length), (0, 0 <= a <= ax.length)

    per_dim = [Counter((b - a,) for (a, b), _ in ranges[0]), Counter(channel(*r) for r, _ in ranges[1])]
    per_dim += [Counter(spatial(ax, r, i) for r, i in rs) for ax, rs in zip(axes, ranges[2:])]
    shapes: Counter = Counter()
    for combo in itertools.product(*(c.items() for c in per_dim)):
        (n,), (c_out, c_in, groups), *sp = (key for key, _ in combo)
        empty = n == 0 or c_out == 0 or any(o == 0 for o, *_ in sp)
        windows = [w[3] if empty else w[2] for w in sp]
        key = ((n, c_out, *(o for o, *_ in sp)), (n, c_in, *(w[1] for w in sp)), (n, c_in, *(w for w, _ in windows)),
               groups, all(v for _, v in windows))
        shapes[key] += math.prod(k for _, k in combo)
    return [TileShape(k, *key) for key, k in shapes.items()]


def chunk_ranges(chunks: Sequence[int], in_len: int, out_len: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(output range, input range) pairs along an axis for input chunks of these lengths:
    chunk boundary c maps to output c * out_len // in_len (a same-size convolution keeps
    the input's chunks; a strided one scales them); a chunk whose outputs are none joins
    its neighbour's input range, so the input ranges still cover the axis."""
    edges = np.cumsum((0, *chunks)).tolist()
    pairs: list[list[int]] = []  # [o0, o1, i0, i1]
    for k, (i0, i1) in enumerate(zip(edges, edges[1:])):
        o0, o1 = i0 * out_len // in_len, out_len if k == len(chunks) - 1 else i1 * out_len // in_len
        if pairs and (o0 == o1 or pairs[-1][0] == pairs[-1][1]):  # an empty one joins its neighbour
            pairs[-1][1], pairs[-1][3] = o1, i1
        else:
            pairs.append([o0, o1, i0, i1])
    return [((o0, o1), (i0, i1)) for o0, o1, i0, i1 in pairs]


def chunk_plan(spec: ConvSpec, chunks: Sequence[Sequence[int]], backend: str = "torch") -> Plan:
    """The Plan with a tile per output chunk of an input chunked as ``chunks`` (dask's
    ``.chunks``: per input dim, the chunks' lengths), each tile owning its input chunks:
    samples as the input's, the output channels whole, spatial axes by chunk_ranges.  The
    input's channel chunks do not split the work (every tile reads all its input channels)."""
    spatial = [chunk_ranges(c, n, o) for c, n, o in zip(chunks[2:], spec.spatial, spec.out_spatial)]
    ranges = [[r for r, _ in chunk_ranges(chunks[0], spec.batch, spec.batch)], [(0, split_extents(spec)[1])],
              *([r for r, _ in pairs] for pairs in spatial)]
    return build_on_ranges(spec, ranges, "chunks", backend, owned=[[i for _, i in pairs] for pairs in spatial])


def build_on_ranges(spec: ConvSpec, ranges: Sequence[Sequence[tuple[int, int]]], partition: str,
                    backend: str = "torch", owned: Sequence[Sequence[tuple[int, int]]] | None = None) -> Plan:
    """The Plan whose tiles compute the products of ``ranges`` (per dim over (N, C_out
    units, *spatial), consecutive ranges covering each dim), one worker each: tiles given
    from outside, such as a dask array's chunks.  ``owned``: per spatial axis, the input
    range each of its tiles owns (consecutive, covering the axis); default aligned."""
    out_ext = split_extents(spec)
    for d, (rs, e) in enumerate(zip(ranges, out_ext)):
        if not rs or rs[0][0] != 0 or rs[-1][1] != e or any(b != c or a >= b for (a, b), (c, _) in zip(rs, rs[1:])):
            raise ValueError(f"ranges of dim {d} must be consecutive, non-empty and cover [0, {e}), got {list(rs)}")
    axes = [spec.axis(i) for i in range(spec.ndim)]
    if owned is None:
        owned = [[ax.owned(a, b) for a, b in rs] for ax, rs in zip(axes, ranges[2:])]
    own_of = [dict(zip(rs, own)) for rs, own in zip(ranges[2:], owned)]
    split_c = len(ranges[1]) > 1
    shells = [tile_shell(spec, axes, list(out_r), [o[r] for o, r in zip(own_of, out_r[2:])], split_c)
              for out_r in itertools.product(*ranges)]
    index = _owner_index(shells)
    tiles = tuple(make_tile(spec, axes, rank, shell, shells, index) for rank, shell in enumerate(shells))
    return Plan(spec=spec, partition=partition, splits=tuple(len(rs) for rs in ranges), workers=len(tiles),
                tiles=tiles, backend=backend)


def check_args(spec: ConvSpec, partition, workers, worker_weights, ownership: str, exchange: str, pipeline,
               backend: str) -> list[float] | None:
    """Validate the arguments of a plan (ValueError/TypeError naming the bad one); returns
    the worker weights as a list."""
    if not isinstance(backend, str):  # which names exist and what each runs: compute/backends (api checks)
        raise TypeError(f"backend must be a str, got {backend!r}")
    if isinstance(pipeline, bool) or not isinstance(pipeline, int) or pipeline < 1:
        raise ValueError(f"pipeline must be an int >= 1, got {pipeline!r}")
    if ownership not in OWNERSHIPS:
        raise ValueError(f"ownership must be one of {OWNERSHIPS}, got {ownership!r}")
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {EXCHANGES}, got {exchange!r}")
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, got {workers!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if worker_weights is not None:
        worker_weights = list(worker_weights)
        if len(worker_weights) != workers:
            raise ValueError(
                f"worker_weights must have one entry per worker ({workers}), got {len(worker_weights)}"
            )
        if not all(isinstance(w, (int, float)) and math.isfinite(w) and w > 0 for w in worker_weights):
            raise ValueError(f"worker_weights must be finite positive numbers, got {worker_weights}")
    Partition.of(partition)  # a clear TypeError/ValueError naming partition
    return worker_weights


def make_plan(
    spec: ConvSpec,
    partition: str | Sequence[int] | Partition = "auto",
    workers: int = 1,
    worker_weights: Sequence[float] | None = None,
    ownership: str = "aligned",
    exchange: str = "neighbours",
    pipeline: int = 1,
    backend: str = "torch",
) -> Plan:
    """Resolve ``partition`` for ``workers`` workers and build the Plan."""
    worker_weights = check_args(spec, partition, workers, worker_weights, ownership, exchange, pipeline, backend)
    name, counts = resolve_splits(spec, partition, workers, ownership)
    return build(spec, counts, name, workers, worker_weights, ownership, exchange, pipeline, backend)
