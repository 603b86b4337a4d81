"""Deep halos: one halo exchange for a run of consecutive layers.

A rank that must produce its shard of a run's last output computes, layer by layer from the
last backwards, the box of each activation it needs: a conv's outputs over box R_i read the
input box R_(i-1) (its window's data, padding resolved into the input), and a layer that
keeps shapes (element-wise, batch norm) needs the same box.  One exchange brings R_0, the
run's input box, from its owners; every layer then computes its (larger than owned) box
from the one before, without messages, redundantly with the neighbours on the overlap.
Each conv step is a Tile whose pieces all come from this rank's box R_(i-1), computed like
any tile (the same window rules), so its outputs are bit for bit the single-node ones.

Shapes only, no torch.  See docs/architecture.md (deep halos).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

from haloconv.tiling.boxes import Box, Piece, Tile
from haloconv.tiling.plan import Plan, make_tile, tile_shell
from haloconv.tiling.spec import ConvSpec


def local_tile(spec: ConvSpec, out: Box, rank: int) -> Tile:
    """The tile computing ``out`` (full N and channels; a box of the output) from one box of
    this rank's: its ``owned`` is the bounding box of the input its window reads (padding
    resolved: mirrored, replicated or wrapped indices are input indices), every piece this
    rank's own."""
    axes = [spec.axis(i) for i in range(spec.ndim)]
    units = spec.groups if spec.groups > 1 else spec.out_channels
    out_r = [(out.lo[0], out.hi[0]), (0, units), *zip(out.lo[2:], out.hi[2:])]
    whole = [(0, n) for n in spec.spatial]
    shell = tile_shell(spec, axes, out_r, whole, False)
    tile = make_tile(spec, axes, 0, shell, [shell])
    n, c = (out.lo[0], out.hi[0]), (0, spec.in_channels)
    if tile.pieces:
        lo = [min(p.src.lo[d] for p in tile.pieces) for d in range(2, spec.ndim + 2)]
        hi = [max(p.src.hi[d] for p in tile.pieces) for d in range(2, spec.ndim + 2)]
    else:  # computes nothing: reads nothing
        lo = hi = [0] * spec.ndim
    owned = Box((n[0], c[0], *lo), (n[1], c[1], *hi))
    pieces = tuple(dataclasses.replace(p, owner=rank) for p in tile.pieces)
    return dataclasses.replace(tile, rank=rank, owned=owned, pieces=pieces)


@dataclasses.dataclass(frozen=True)
class DeepRun:
    """A run of layers on shards with one exchange.

    ``steps``: per layer, its ConvSpec (a conv) or None (keeps shapes and reads only its own
    position).  ``boxes[r][i]``: the box of activation i (0: the run's input) rank r
    computes or holds (its last: r's shard of the run's output); ``tiles[r][i]``: the Tile
    of step i on rank r (None for shape-keeping steps); ``exchange``: a Plan whose tiles
    bring every rank its box of the run's input from the shards' owners (spmd.halo_exchange
    and its adjoint move it)."""

    steps: tuple[ConvSpec | None, ...]
    boxes: tuple[tuple[Box, ...], ...]
    tiles: tuple[tuple[Tile | None, ...], ...]
    exchange: Plan

    def halo_elements(self, rank: int) -> int:
        return self.exchange.tiles[rank].halo_elements

    def computed_elements(self, rank: int) -> list[int]:
        """Per conv step: the output elements ``rank`` computes (its share and the overlap)."""
        return [t.out.volume for t in self.tiles[rank] if t is not None]


def shapes_of(steps: Sequence[ConvSpec | None], shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The shape of every activation of the run (0: its input)."""
    out = [tuple(shape)]
    for s in steps:
        out.append(tuple(s.output_shape) if s is not None else out[-1])
    return out


@functools.lru_cache(maxsize=256)
def deep_run(steps: tuple[ConvSpec | None, ...], shards: tuple[tuple[Box, ...], ...], partition: str = "deep"
             ) -> DeepRun:
    """The DeepRun of ``steps``, where ``shards[i]`` holds each rank's shard of activation i
    (as the layout splits it; 0: the run's input).  A rank computes at least its own shard
    of every activation (a batch norm's statistics come from it), and what the next step
    reads."""
    ranks = len(shards[0])
    boxes, tiles = [], []
    for r in range(ranks):
        b, ts = [shards[-1][r]], []
        for i in range(len(steps) - 1, -1, -1):
            spec = steps[i]
            if spec is None:
                b.append(_cover(b[-1], shards[i][r]))
                ts.append(None)
                continue
            t = local_tile(spec, b[-1], r)
            have = _cover(t.owned, shards[i][r])
            ts.append(dataclasses.replace(t, owned=have))
            b.append(have)
        boxes.append(tuple(reversed(b)))
        tiles.append(tuple(reversed(ts)))
    first = next(s for s in steps if s is not None)
    ex = tuple(_exchange_tile(r, boxes[r][0], shards[-1][r], shards[0]) for r in range(ranks))
    plan = Plan(spec=first, partition=partition, splits=(1,) * (first.ndim + 2), workers=ranks, tiles=ex,
                ownership="even")
    return DeepRun(tuple(steps), tuple(boxes), tuple(tiles), plan)


def _cover(a: Box, b: Box) -> Box:
    """The smallest box holding ``a`` and ``b`` (an empty box holds nothing)."""
    if not b.volume:
        return a
    if not a.volume:
        return b
    return Box(tuple(map(min, a.lo, b.lo)), tuple(map(max, a.hi, b.hi)))


def _exchange_tile(rank: int, need: Box, out: Box, owned: Sequence[Box]) -> Tile:
    """Rank ``rank``'s window ``need`` of the run's input, in pieces from the owners of
    ``owned`` (its own first, then the neighbours by rank: the order both sides post)."""
    pieces = []
    for s in sorted(range(len(owned)), key=lambda s: (s != rank, s)):
        lo = tuple(max(a, b) for a, b in zip(need.lo, owned[s].lo))
        hi = tuple(min(a, b) for a, b in zip(need.hi, owned[s].hi))
        if need.volume and all(a < b for a, b in zip(lo, hi)):
            src = Box(lo, hi)
            dst = Box(tuple(a - w for a, w in zip(lo, need.lo)), tuple(b - w for b, w in zip(hi, need.lo)))
            pieces.append(Piece(s, src, dst, (1,) * len(lo)))
    first = (0,) * (len(need.lo) - 2)
    return Tile(rank, out, owned[rank], need, need, first, 1, tuple(pieces))
