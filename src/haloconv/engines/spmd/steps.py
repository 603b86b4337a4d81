"""What each rank does with a Plan: scatter, halo exchange, compute, gather (their
adjoints: spmd/backward; windows sent whole by the master: spmd/master_windows; how a
box travels: spmd/transfer).

Every rank calls these with the same Plan (SPMD).  Worker ``r`` computes tile ``r``;
ranks without a tile take part in collectives and hold nothing.  The data moved is
exactly what ``Plan.traffic`` predicts.
"""

from __future__ import annotations

import time

import torch

from haloconv.compute import kernels
from haloconv.compute import tile as one_tile
from haloconv.engines.spmd.comm import Comm
from haloconv.engines.spmd.transfer import (
    fill,
    post_output_receive,
    recv_box,
    recv_dtype,
    recv_in_place,
    send_box,
    send_to_workers,
)
from haloconv.engines.windows import blank, piece_data
from haloconv.progress import Counter
from haloconv.tiling.boxes import Box, Tile
from haloconv.tiling.plan import Plan


def _room(tile: Tile, shape) -> Box:
    """The owned box grown to the tile's window, inside the tensor: a shard's buffer."""
    return Box(
        tuple(max(0, min(o, w)) for o, w in zip(tile.owned.lo, tile.window.lo)),
        tuple(min(n, max(o, w)) for o, w, n in zip(tile.owned.hi, tile.window.hi, shape)),
    )


def check_shard(x_local: torch.Tensor | None, tile: Tile | None, name: str) -> None:
    if tile is None:
        return
    if x_local is None or tuple(x_local.shape) != tile.owned.shape:
        got = None if x_local is None else tuple(x_local.shape)
        raise ValueError(f"{name} on rank {tile.rank} must have the owned shape {tile.owned.shape}, got {got}")


def distribute_weights(
    comm: Comm, plan: Plan, weight: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype, src: int = 0
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """From the full weight/bias on ``src``: this rank's filters (None if idle)."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("weights"):
        works, keep = [], []
        if comm.rank == src:
            for t in plan.tiles:
                if t.rank == src:
                    continue
                c0, c1 = plan.weight_box(t)
                parts = [weight[c0:c1].contiguous()] + ([bias[c0:c1].contiguous()] if bias is not None else [])
                keep += parts
                works += [comm.isend(p, t.rank, "weights") for p in parts]
            comm.wait(works)
            if tile is None:
                return None, None
            c0, c1 = plan.weight_box(tile)
            return weight[c0:c1], None if bias is None else bias[c0:c1]
        if tile is None:
            return None, None
        c0, c1 = plan.weight_box(tile)
        w = torch.empty((c1 - c0, *plan.spec.weight_shape[1:]), dtype=dtype, device=comm.device)
        works.append(comm.irecv(w, src, "weights"))
        b = None
        if plan.spec.has_bias:
            b = torch.empty(c1 - c0, dtype=dtype, device=comm.device)
            works.append(comm.irecv(b, src, "weights"))
        comm.wait(works)
        return w, b


def scatter(comm: Comm, plan: Plan, x: torch.Tensor | None, src: int = 0) -> torch.Tensor | None:
    """From the full ``x`` on ``src``: every rank's owned input box (None if idle)."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("scatter"):
        if comm.rank == src:
            if x is None or tuple(x.shape) != plan.spec.input_shape:
                raise ValueError(f"x on the source rank must have shape {plan.spec.input_shape}")
            x = x.contiguous()
            works, keep = send_to_workers(comm, plan, x, src, lambda t: [t.owned])
            mine = x[tile.owned.slices()] if tile is not None else None
            comm.wait(works)
            return mine
        if tile is None:
            return None
        dtype = recv_dtype(comm, src)
        room = _room(tile, plan.spec.input_shape)
        buffer = torch.empty(room.shape, dtype=dtype, device=comm.device)
        part = buffer[tile.owned.within(room)]
        works = recv_in_place(comm, part, tile.owned, plan.spec.input_shape, src, "scatter")
        if works is not None:
            _mark_room(buffer)  # halos can later land around the shard
            comm.wait(works)
            return part
        part = torch.empty(tile.owned.shape, dtype=dtype, device=comm.device)
        comm.wait(recv_box(comm, part, tile.owned, plan.spec.input_shape, src, "scatter"))
        return part


# A buffer haloconv allocated around a shard (received input, conv outputs) carries this
# mark: its margins beyond the shard are free, so a halo can be written there and the
# window used in place.  The mark lives on the buffer itself (no registry to outlive it).
_ROOM = "_haloconv_halo_room"


def _mark_room(t: torch.Tensor) -> None:
    setattr(t, _ROOM, True)


def _has_room(t: torch.Tensor) -> bool:
    return getattr(t, _ROOM, False) is True


def _backing(x_local: torch.Tensor, owned: Box) -> tuple[torch.Tensor, Box] | None:
    """The contiguous tensor ``x_local`` is a box-slice of, and the box it covers.  None for
    an empty shard (a tile that owns nothing on some axis): its offset locates nothing."""
    base = x_local._base
    if (base is None or x_local.numel() == 0 or base.dim() != x_local.dim() or not base.is_contiguous()
            or x_local.stride() != base.stride()):
        return None
    off = x_local.storage_offset() - base.storage_offset()
    idx = []
    for n in reversed(base.shape):
        idx.append(off % n)
        off //= n
    idx.reverse()
    lo = tuple(o - i for o, i in zip(owned.lo, idx))
    return base, Box(lo, tuple(l + n for l, n in zip(lo, base.shape)))


def _in_place_window(tile: Tile, x_local: torch.Tensor, input_shape, halo: bool = True
                     ) -> tuple[torch.Tensor, bool] | None:
    """(window view, writable) when the window can be a view of the shard itself or of the
    buffer it sits in; with ``halo``, only where the halo can be written (or is there)."""
    for p in tile.pieces:  # own data must already sit where the window wants it
        if p.owner == tile.rank and (
            any(st != 1 for st in p.steps)
            or tuple(l - w for l, w in zip(p.src.lo, tile.window.lo)) != p.dst.lo
        ):
            return None
    full = Box((0,) * len(input_shape), tuple(input_shape))
    holders = [(x_local, tile.owned, False)]
    back = _backing(x_local, tile.owned)
    if back is not None:
        holders.append((back[0], back[1], _has_room(back[0])))
    for t, box, writable in holders:
        # a full input (e.g. the master's x) already holds every halo: nothing to write
        if box.contains(tile.window) and (not halo or writable or box == full):
            return t[tile.window.within(box)], writable
    return None


def post_halos(comm: Comm, plan: Plan, x_local: torch.Tensor | None) -> tuple[list, list, list]:
    """Post the sends of what our neighbours need from our shard (in their pieces' order)
    and the receives of our halo pieces.  Returns (works, kept send buffers, [(piece, buffer)])."""
    tile = plan.tile_of(comm.rank)
    keep, incoming, sends = [], [], []
    if tile is None:
        return [], keep, incoming
    for t in plan.tiles:
        if t.rank == comm.rank:
            continue
        for p in t.pieces:
            if p.owner == comm.rank:
                data = x_local[p.src.within(tile.owned)].contiguous()
                keep.append(data)
                sends.append((data, t.rank))
    for p in tile.halo_pieces:
        buf = torch.empty(p.src.shape, dtype=x_local.dtype, device=x_local.device)
        incoming.append((p, buf))
    works = comm.post(sends, [(buf, p.owner) for p, buf in incoming], "halo")
    return works, keep, incoming


def build_window(tile: Tile, x_local: torch.Tensor, incoming: list, works: list = ()) -> torch.Tensor:
    """A new window: blank (zeros or the padding value), our own pieces, then (once
    ``works`` are done) the halo pieces."""
    window = blank(tile, x_local)
    for p in tile.pieces:
        if p.owner == tile.rank:
            window[p.dst.slices()] = piece_data(x_local[p.src.within(tile.owned)], p)
    Comm.wait(works)
    fill(window, incoming)
    return window


def part_window(part: Tile, tile: Tile, x_local: torch.Tensor, incoming: list, input_shape) -> torch.Tensor:
    """The window of ``part``, a part of this rank's ``tile`` (Plan.overlap_parts): a view
    of the shard where it lies there, else assembled from the shard and the halo pieces
    received for the whole tile (``incoming``: [(piece, data)], each part's piece inside one
    of them)."""
    in_place = _in_place_window(part, x_local, input_shape, halo=False)
    if in_place is not None:
        return in_place[0]
    window = blank(part, x_local)
    for p in part.pieces:
        if p.owner == tile.rank:
            data = x_local[p.src.within(tile.owned)]
        else:
            q, buf = next((q, b) for q, b in incoming if q.owner == p.owner and q.src.contains(p.src))
            data = buf[p.src.within(q.src)]
        window[p.dst.slices()] = piece_data(data, p)
    return window


def halo_exchange(comm: Comm, plan: Plan, x_local: torch.Tensor | None, copy: bool = False) -> torch.Tensor | None:
    """This rank's conv window: its own input plus the halo pieces from their owners.

    When the shard sits in a buffer with room around it (as haloconv allocates them), the
    halos are written into that room and the window is a view: no copy of the shard.
    ``copy=True`` always makes a new window (autograd saves it: nothing may write into it)."""
    tile = plan.tile_of(comm.rank)
    check_shard(x_local, tile, "x_local")
    with comm.phase("halo"):
        works, keep, incoming = post_halos(comm, plan, x_local)
        if tile is None:
            comm.wait(works)
            return None
        in_place = None if copy else _in_place_window(tile, x_local, plan.spec.input_shape, halo=bool(incoming))
        if in_place is None:
            return build_window(tile, x_local, incoming, works)
        window, writable = in_place
        comm.wait(works)
        if writable:
            fill(window, incoming)
        return window


def compute(
    comm: Comm, plan: Plan, window: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None,
    torch_backend: object | None = None,
    tile: Tile | None = None,
) -> torch.Tensor | None:
    """Convolve this rank's window (or that of ``tile``, a part of it) with its filters
    (weight/bias: the full tensors, or already this tile's slice)."""
    tile = tile or plan.tile_of(comm.rank)
    if tile is None:
        return None
    t0 = time.perf_counter()
    with comm.phase("compute"):
        c0, c1 = plan.weight_box(tile)
        if weight.shape[0] == plan.spec.out_channels:
            weight = weight[c0:c1]
            bias = None if bias is None else bias[c0:c1]
        if torch_backend is None:
            torch_backend = kernels.select_backend(plan.spec, window, weight, bias)
        y = one_tile.compute_tile(plan, tile, window, weight, bias, torch_backend)
        if y._base is not None:  # the rows computed beyond the tile are room for the next halo
            _mark_room(y._base)
        comm.pace(t0)
        return y


def post_gather(comm: Comm, plan: Plan, out: torch.Tensor, dst: int = 0) -> list:
    """On ``dst``: post the receives of every other rank's output box, straight into
    ``out`` where its runs are contiguous.  Returns what finish_gather needs."""
    posted = []
    for tile in plan.tiles:
        if tile.rank == dst:
            continue
        for t in plan.subtiles(tile, dst):
            posted.append((t, *post_output_receive(comm, out, t.out, t.rank)))
    return posted


def finish_gather(comm: Comm, plan: Plan, posted: list, out: torch.Tensor, y_local: torch.Tensor | None,
                  dst: int = 0, progress: Counter | None = None) -> torch.Tensor:
    """On ``dst``: write its own output box, then wait for the others posted by post_gather
    (each one that lands, and its own, counted to ``progress``)."""
    with comm.phase("gather"):
        tile = plan.tile_of(dst)
        if tile is not None:
            out[tile.out.slices()] = y_local
        if progress is not None:
            progress.tick()
        for t, buf, works in posted:
            comm.wait(works)
            if buf is not None:
                out[t.out.slices()] = buf
            if progress is not None:
                progress.tick()
    return out


def gather(
    comm: Comm, plan: Plan, y_local: torch.Tensor | None, dst: int = 0, out: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Every rank's output box into the full result on ``dst`` (None elsewhere)."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("gather"):
        if comm.rank != dst:
            if tile is not None:
                keep: list = []
                comm.wait(send_box(comm, y_local, tile.out, dst, "gather", keep, held=tile.out,
                                   shape=plan.spec.output_shape))
            return None
        if out is None:
            out = torch.empty(plan.spec.output_shape, dtype=y_local.dtype, device=y_local.device)
        posted = post_gather(comm, plan, out, dst)
    return finish_gather(comm, plan, posted, out, y_local, dst)


