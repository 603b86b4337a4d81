"""Windows sent whole by the master, piece by piece, instead of halos swapped between
neighbours: exchange='master' (a worker computes each part of its window as soon as it is
in) and dynamic scheduling (tiles handed out one by one to whichever worker is free)."""

from __future__ import annotations

import torch

from haloconv.engines.spmd import transfer
from haloconv.engines.spmd.comm import Comm
from haloconv.engines.spmd.steps import compute
from haloconv.engines.windows import assemble_window
from haloconv.tiling.boxes import Tile
from haloconv.tiling.plan import Plan


def scatter_windows(comm: Comm, plan: Plan, x: torch.Tensor | None, src: int = 0,
                    pending: list | None = None) -> torch.Tensor | None:
    """exchange='master': the source sends every rank each piece of its window.

    On the source, with ``pending`` given, the sends are left in flight (appended to it)
    so the source can compute meanwhile."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("scatter"):
        if comm.rank == src:
            x = x.contiguous()
            works, keep = transfer.send_to_workers(
                comm, plan, x, src, lambda t: [p.src for st in plan.subtiles(t, src) for p in st.pieces]
            )
            window = assemble_window(x, tile) if tile is not None else None  # a view when it can be
            if pending is None:
                comm.wait(works)
            else:
                pending.append((works, keep))
            return window
        if tile is None:
            return None
        (st, window, works, bufs), = post_window_receives(comm, plan, tile, src)
        comm.wait(works)
        transfer.fill(window, bufs)
        return window


def post_window_receives(comm: Comm, plan: Plan, tile: Tile, src: int) -> list:
    """Post the receives of every part of this rank's window (exchange='master')."""
    dtype = transfer.recv_dtype(comm, src)
    return [post_piece_receives(comm, plan, st, dtype, src) for st in plan.subtiles(tile, src)]


def post_piece_receives(comm: Comm, plan: Plan, st: Tile, dtype: torch.dtype, src: int) -> tuple:
    """(tile, window, works, buffers): the receives of every piece of ``st``'s window from ``src``."""
    shape = plan.spec.input_shape
    covered = sum(p.dst.volume for p in st.pieces) == st.window.volume
    window = torch.empty(st.window.shape, dtype=dtype, device=comm.device)
    if not covered:
        window.fill_(st.fill)
    works, bufs = [], []
    for p in st.pieces:
        direct = None
        if all(x == 1 for x in p.steps):
            direct = transfer.recv_in_place(comm, window[p.dst.slices()], p.src, shape, src, "scatter")
        if direct is not None:
            works += direct
        else:
            b = torch.empty(p.src.shape, dtype=dtype, device=comm.device)
            bufs.append((p, b))
            works += transfer.recv_box(comm, b, p.src, shape, src, "scatter")
    return st, window, works, bufs


# -- dynamic scheduling: tiles handed out one by one to whichever worker is free ----------------
def broadcast_weights(comm: Comm, plan: Plan, weight, bias, dtype: torch.dtype, src: int = 0, to=None):
    """The whole weight (and bias) from ``src`` to every rank (each may compute any tile);
    on ``src``, ``to``: only to these ranks (a gloo send waits for its receiver, so one
    stalled rank would hold up the others' sends)."""
    with comm.phase("weights"):
        if comm.rank == src:
            parts = [weight.contiguous()] + ([bias.contiguous()] if bias is not None else [])
            ranks = [r for r in range(comm.world) if r != src] if to is None else to
            comm.wait([comm.isend(t, r, "weights") for r in ranks for t in parts])
            return weight, bias
        w = torch.empty(plan.spec.weight_shape, dtype=dtype, device=comm.device)
        b = torch.empty(plan.spec.out_channels, dtype=dtype, device=comm.device) if plan.spec.has_bias else None
        comm.wait([comm.irecv(t, src, "weights") for t in (w, b) if t is not None])
        return w, b


def hand_out(comm: Comm, plan: Plan, x: torch.Tensor | None, index: int, dst: int, out: torch.Tensor, keep: list):
    """Master: tell ``dst`` to compute tile ``index`` (-1: stop), send its window's pieces and
    post the receive of its output; returns the receive works and the buffer (or None)."""
    code = torch.tensor([index], dtype=torch.int64, device=comm.device)
    keep.append(code)
    comm.wait([comm.isend(code, dst, "control")])
    if index < 0:
        return [], None
    tile = plan.tiles[index]
    works = []
    for p in tile.pieces:
        works += transfer.send_box(comm, x, p.src, dst, "scatter", keep)
    comm.wait(works)
    buf, works = transfer.post_output_receive(comm, out, tile.out, dst)
    return works, buf


def dynamic_worker(comm: Comm, plan: Plan, weight, bias, torch_backend, dtype: torch.dtype, src: int = 0) -> int:
    """A worker's side: tile after tile as the master hands them out, until told to stop.
    Returns the tiles done."""
    done = 0
    while True:
        code = torch.empty(1, dtype=torch.int64, device=comm.device)
        comm.irecv(code, src, "control").wait()
        index = int(code.item())
        if index < 0:
            return done
        with comm.phase("scatter"):
            st, window, works, bufs = post_piece_receives(comm, plan, plan.tiles[index], dtype, src)
            comm.wait(works)
            transfer.fill(window, bufs)
        y = compute(comm, plan, window, weight, bias, torch_backend, tile=st)
        with comm.phase("gather"):
            keep: list = []
            comm.wait(transfer.send_box(comm, y, st.out, src, "gather", keep, held=st.out,
                                        shape=plan.spec.output_shape))
        done += 1


def windows_compute_gather(
    comm: Comm, plan: Plan, weight, bias, torch_backend, src: int = 0
) -> None:
    """A worker's whole share with exchange='master': receive its window part by part,
    compute each part as soon as it is in, send each output back as soon as it is done."""
    tile = plan.tile_of(comm.rank)
    if tile is None:
        return
    with comm.phase("scatter"):
        entries = post_window_receives(comm, plan, tile, src)
    sends, keep = [], []
    for st, window, works, bufs in entries:
        with comm.phase("scatter"):
            comm.wait(works)
            transfer.fill(window, bufs)
        y = compute(comm, plan, window, weight, bias, torch_backend, tile=st)
        with comm.phase("gather"):
            sends += transfer.send_box(comm, y, st.out, src, "gather", keep, held=st.out, shape=plan.spec.output_shape)
    with comm.phase("gather"):
        comm.wait(sends)

