"""A streamed run's plan: output blocks as large as the memory a process may hold allows
(the cost model's peak of a tile, costmodel/cost.block_peak), the block an interrupted run used
when it still fits, and the backend that computes the whole output fastest.  The engines
that stream (engines/stream/workers.py, stream_threads.py) measure what their processes hold once
they have started, then ask the StreamTiler they were handed for the plan: they never
choose tiles themselves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from haloconv.compute import backends
from haloconv.costmodel.cost import Profile, block_peak
from haloconv.files.journal import header_of, journal_path
from haloconv.planner.choice import supported_backends
from haloconv.planner.plans import load
from haloconv.tiling.plan import Plan, build
from haloconv.tiling.spec import ConvSpec

# a resumed run keeps its journal's block while it fits the allowance within this much
RESUME_SLACK_BYTES = 16 << 20


def stream_block(spec: ConvSpec, allowance: int, backend: str = "torch", itemsize: int = 4,
                 file_itemsize: int = 4, min_tiles: int = 1) -> tuple[int | None, ...]:
    """The block (per dim over N, C_out, *spatial; None = whole) of the largest output
    tiles whose peak memory (tile_peak_bytes) fits ``allowance`` bytes: samples first,
    then the outer spatial axes (row bands read contiguous runs of the file).  Then cut
    finer along the first spatial axis until there are ``min_tiles`` (load balance)."""
    out = spec.output_shape
    block = list(out)

    def peak(blk) -> int:
        return block_peak(spec, blk, backend, itemsize, file_itemsize)

    for d in (0, *range(2, len(out))):
        if peak(block) <= allowance:
            break
        lo, hi = 1, block[d]  # the largest size along d that fits (peak grows with it)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if peak([*block[:d], mid, *block[d + 1:]]) <= allowance:
                lo = mid
            else:
                hi = mid - 1
        block[d] = lo
    if peak(block) > allowance:
        raise ValueError(f"memory_budget leaves {allowance / 2**20:.0f} MiB for data, less than the smallest tile "
                         f"needs ({peak(block) / 2**20:.0f} MiB); raise the budget")
    tiles = math.prod(-(-o // b) for o, b in zip(out, block))
    if tiles < min_tiles and len(out) > 2:
        others = tiles // -(-out[2] // block[2])  # tiles over the other dims
        bands = -(-min_tiles // others)  # needed along the first spatial axis
        block[2] = max(1, min(block[2], -(-out[2] // bands)))
    return tuple(None if b == o else b for b, o in zip(block, out))


def stream_plan(spec: ConvSpec, allowance: int, backend: str = "torch", itemsize: int = 4,
                file_itemsize: int = 4, min_tiles: int = 1, block: Sequence[int | None] | None = None) -> Plan:
    """The Plan of a streamed run: output blocks sized by ``stream_block`` (or the given
    ``block``), one tile each."""
    if block is None:
        block = stream_block(spec, allowance, backend, itemsize, file_itemsize, min_tiles)
    check_block(spec, block)
    tiles = math.prod(-(-o // (b or o)) for o, b in zip(spec.output_shape, block))
    return build(spec, [1] * len(block), "stream", tiles, backend=backend, block=block)


def check_block(spec: ConvSpec, block: Sequence[int | None]) -> None:
    """A streamed run's given block: a size >= 1 or None per dim over (N, C_out, *spatial)."""
    if len(block) != spec.ndim + 2 or any(b is not None and (not isinstance(b, int) or b < 1) for b in block):
        raise ValueError(f"block must give a size >= 1 or None per dim over (N, C_out, *spatial), got {block!r}")


def stream_backend(spec: ConvSpec, prof: Profile, weight=None) -> str:
    """backend='auto' for a streamed run: the one computing the whole output fastest
    (the profile's rates on the whole problem; tiles only add their halos)."""
    whole = (spec.batch, spec.in_channels, *spec.spatial)
    return min(supported_backends(spec, "auto", weight),
               key=lambda b: prof.compute_seconds(b, spec, whole, spec.output_shape, spec.groups))


@dataclass(frozen=True)
class StreamTiler:
    """What a streamed run's tiles are cut from: the conv, its backend, the compute's and
    the file's item sizes, and the block when the caller gave one.  ``plan`` makes the
    Plan once the engine knows the bytes a tile may hold."""

    spec: ConvSpec
    backend: str
    itemsize: int = 4
    file_itemsize: int = 4
    block: tuple[int | None, ...] | None = None

    def plan(self, allowance: int, min_tiles: int, resume_at: Path | None = None) -> Plan:
        """The Plan of tiles whose peak fits ``allowance`` bytes, at least ``min_tiles`` of
        them; ``resume_at``: the output a resumed run goes on with, whose journal's block
        is kept while it fits (resumed_block)."""
        block = self.block
        if block is None and resume_at is not None:
            block = resumed_block(resume_at, self, allowance)
        return stream_plan(self.spec, allowance, self.backend, self.itemsize, self.file_itemsize, min_tiles, block)


def resumed_block(out: Path, tiler: StreamTiler, allowance: int) -> tuple[int, ...] | None:
    """The block of the interrupted run ``out``'s journal, for the resumed run to keep its
    tiles: the tiles are sized by what the processes hold when a run starts, which moves a
    few MB between two runs of the same command (and with it a tile by a row).  Kept while
    it fits the allowance within RESUME_SLACK_BYTES; None otherwise (the tiles sized
    afresh, and a journal of other tiles is refused, files/journal.py)."""
    spec = tiler.spec
    head = header_of(journal_path(out))
    block = None if head is None else head.get("block")
    if not (isinstance(block, list) and len(block) == spec.ndim + 2 and all(isinstance(b, int) for b in block)):
        return None
    if block_peak(spec, block, tiler.backend, tiler.itemsize, tiler.file_itemsize) > allowance + RESUME_SLACK_BYTES:
        return None
    return tuple(block)


def tiler_for(spec: ConvSpec, weight, backend: str | None, profile: object, dtype, file_dtype,
              block: Sequence[int | None] | None) -> StreamTiler:
    """The StreamTiler of a streamed run: its backend (as haloconv.conv's default; 'auto':
    the one computing the whole output fastest; checked against the filters ``weight``),
    the compute's and the file's item sizes, and the block when given (checked)."""
    if block is not None:  # refused before any process starts or measures its memory
        check_block(spec, tuple(block))
    if backend is None:
        backend = backends.default_for(spec)
    if backend == "auto":
        backend = stream_backend(spec, load(profile), weight)
    else:
        backends.check(backend, spec, weight)
    return StreamTiler(spec, backend, np.dtype(dtype).itemsize, np.dtype(file_dtype).itemsize,
                       None if block is None else tuple(block))
