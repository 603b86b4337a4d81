"""What each rank does with a Plan: scatter, halo exchange, compute, gather.

Every rank calls these with the same Plan (SPMD).  Worker ``r`` computes tile ``r``;
ranks without a tile take part in collectives and hold nothing.  The data moved is
exactly what ``Plan.traffic`` predicts.
"""

from __future__ import annotations

import torch

from haloconv import kernels
from haloconv.engines.base import piece_data
from haloconv.engines.comm import Comm
from haloconv.plan import Box, Plan, Tile

_DTYPES = [torch.float32, torch.float64]


def _rel(box: Box, origin: Box) -> tuple[slice, ...]:
    """Slices of ``box`` inside a tensor that holds ``origin``."""
    return tuple(slice(l - o, h - o) for l, h, o in zip(box.lo, box.hi, origin.lo))


def _check_shard(x_local: torch.Tensor | None, tile: Tile | None, name: str) -> None:
    if tile is None:
        return
    if x_local is None or tuple(x_local.shape) != tile.owned.shape:
        got = None if x_local is None else tuple(x_local.shape)
        raise ValueError(f"{name} on rank {tile.rank} must have the owned shape {tile.owned.shape}, got {got}")


def scatter(comm: Comm, plan: Plan, x: torch.Tensor | None, src: int = 0) -> torch.Tensor | None:
    """From the full ``x`` on ``src``: every rank's owned input box (None if idle)."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("scatter"):
        if comm.rank == src:
            if x is None or tuple(x.shape) != plan.spec.input_shape:
                raise ValueError(f"x on the source rank must have shape {plan.spec.input_shape}")
            works, keep = [], []
            for t in plan.tiles:
                if t.rank == src:
                    continue
                code = torch.tensor([_DTYPES.index(x.dtype)], dtype=torch.int64)
                part = x[t.owned.slices()].contiguous()
                keep += [code, part]
                works += [comm.isend(code, t.rank, "control"), comm.isend(part, t.rank, "scatter")]
            mine = x[tile.owned.slices()] if tile is not None else None
            comm.wait(works)
            return mine
        if tile is None:
            return None
        code = torch.empty(1, dtype=torch.int64)
        comm.irecv(code, src, "control").wait()
        part = torch.empty(tile.owned.shape, dtype=_DTYPES[int(code.item())], device=comm.device)
        comm.irecv(part, src, "scatter").wait()
        return part


def halo_exchange(comm: Comm, plan: Plan, x_local: torch.Tensor | None) -> torch.Tensor | None:
    """This rank's conv window: its own input plus the halo pieces from their owners."""
    tile = plan.tile_of(comm.rank)
    _check_shard(x_local, tile, "x_local")
    with comm.phase("halo"):
        works, keep = [], []
        # send what our neighbours need from us, in their pieces' order
        if tile is not None:
            for t in plan.tiles:
                if t.rank == comm.rank:
                    continue
                for p in t.pieces:
                    if p.owner == comm.rank:
                        data = x_local[_rel(p.src, tile.owned)].contiguous()
                        keep.append(data)
                        works.append(comm.isend(data, t.rank, "halo"))
        if tile is None:
            comm.wait(works)
            return None
        incoming = []
        for p in tile.halo_pieces:
            buf = torch.empty(p.src.shape, dtype=x_local.dtype, device=x_local.device)
            incoming.append((p, buf))
            works.append(comm.irecv(buf, p.owner, "halo"))
        if not incoming and tile.window == tile.owned and all(all(s == 1 for s in p.steps) for p in tile.pieces):
            comm.wait(works)
            return x_local  # no halo, no padding copies: the shard is the window
        window = x_local.new_zeros(tile.window.shape)
        for p in tile.pieces:
            if p.owner == comm.rank:
                window[p.dst.slices()] = piece_data(x_local[_rel(p.src, tile.owned)], p)
        comm.wait(works)
        for p, buf in incoming:
            window[p.dst.slices()] = piece_data(buf, p)
        return window


def scatter_windows(comm: Comm, plan: Plan, x: torch.Tensor | None, src: int = 0) -> torch.Tensor | None:
    """exchange='master': the source sends every rank each piece of its window."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("scatter"):
        if comm.rank == src:
            works, keep = [], []
            for t in plan.tiles:
                if t.rank == src:
                    continue
                code = torch.tensor([_DTYPES.index(x.dtype)], dtype=torch.int64)
                keep.append(code)
                works.append(comm.isend(code, t.rank, "control"))
                for p in t.pieces:
                    data = x[p.src.slices()].contiguous()
                    keep.append(data)
                    works.append(comm.isend(data, t.rank, "scatter"))
            window = None
            if tile is not None:
                window = x.new_zeros(tile.window.shape)
                for p in tile.pieces:
                    window[p.dst.slices()] = piece_data(x[p.src.slices()], p)
            comm.wait(works)
            return window
        if tile is None:
            return None
        code = torch.empty(1, dtype=torch.int64)
        comm.irecv(code, src, "control").wait()
        dtype = _DTYPES[int(code.item())]
        window = torch.zeros(tile.window.shape, dtype=dtype, device=comm.device)
        bufs = [(p, torch.empty(p.src.shape, dtype=dtype, device=comm.device)) for p in tile.pieces]
        comm.wait([comm.irecv(b, src, "scatter") for _, b in bufs])
        for p, b in bufs:
            window[p.dst.slices()] = piece_data(b, p)
        return window


def compute(
    comm: Comm, plan: Plan, window: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None,
    backend: object | None = None,
) -> torch.Tensor | None:
    """Convolve this rank's window with its filters (weight/bias: the full tensors, or
    already this tile's slice)."""
    tile = plan.tile_of(comm.rank)
    if tile is None:
        return None
    with comm.phase("compute"):
        c0, c1 = plan.weight_box(tile)
        if weight.shape[0] == plan.spec.out_channels:
            weight = weight[c0:c1]
            bias = None if bias is None else bias[c0:c1]
        if backend is None:
            backend = kernels.select_backend(plan.spec, window, weight, bias)
        return kernels.conv_tile(
            window, weight, bias, plan.spec, tile.groups, backend, tile.first, tile.out.shape[2:]
        )


def gather(
    comm: Comm, plan: Plan, y_local: torch.Tensor | None, dst: int = 0, out: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Every rank's output box into the full result on ``dst`` (None elsewhere)."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("gather"):
        if comm.rank != dst:
            if tile is not None:
                comm.isend(y_local.contiguous(), dst, "gather").wait()
            return None
        ref = y_local
        dtype = ref.dtype if ref is not None else (out.dtype if out is not None else torch.float32)
        if out is None:
            out = torch.empty(plan.spec.output_shape, dtype=dtype, device=comm.device)
        bufs = []
        for t in plan.tiles:
            if t.rank == dst:
                out[t.out.slices()] = y_local
                continue
            buf = torch.empty(t.out.shape, dtype=out.dtype, device=out.device)
            bufs.append((t, buf, comm.irecv(buf, t.rank, "gather")))
        for t, buf, work in bufs:
            work.wait()
            out[t.out.slices()] = buf
        return out
