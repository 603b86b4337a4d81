"""The adjoint of what each rank does with a Plan (engines/spmd/steps.py): the gradient of a
window goes back to the owners of its pieces (halo_reduce), the output's gradient is
scattered by output box, each tile computes its gradients, and the master adds them up."""

from __future__ import annotations

import torch

from haloconv.compute import tile as one_tile
from haloconv.engines.gradients import add_tile_grads, piece_grad
from haloconv.engines.spmd.comm import Comm
from haloconv.engines.spmd.transfer import recv_box, recv_dtype, send_to_workers
from haloconv.tiling.plan import Plan


def halo_reduce(comm: Comm, plan: Plan, g_window: torch.Tensor | None) -> torch.Tensor | None:
    """Backward of halo_exchange: the gradient of every piece of this rank's window goes
    back to the piece's owner, who adds it into the gradient of its shard."""
    return finish_halo_reduce(comm, post_halo_reduce(comm, plan, g_window))


def post_halo_reduce(comm: Comm, plan: Plan, g_window: torch.Tensor | None) -> tuple:
    """The first half of halo_reduce: the halo gradients sent to their owners, the receives
    of ours posted, our own pieces' gradients added up; finish_halo_reduce waits and adds
    the rest (the caller computes meanwhile)."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("halo"):
        keep, sends = [], []
        if tile is None:
            return None, [], [], [], None
        for p in tile.halo_pieces:  # in the order the owner posts its receives
            data = piece_grad(g_window[p.dst.slices()], p).contiguous()
            keep.append(data)
            sends.append((data, p.owner))
        incoming, recvs = [], []
        for t in plan.tiles:
            if t.rank == comm.rank:
                continue
            for p in t.pieces:
                if p.owner == comm.rank:
                    buf = torch.empty(p.src.shape, dtype=g_window.dtype, device=g_window.device)
                    incoming.append((p, buf))
                    recvs.append((buf, t.rank))
        works = comm.post(sends, recvs, "halo")
        g = g_window.new_zeros(tile.owned.shape)
        for p in tile.pieces:
            if p.owner == comm.rank:
                g[p.src.within(tile.owned)] += piece_grad(g_window[p.dst.slices()], p)
        return g, works, keep, incoming, tile


def finish_halo_reduce(comm: Comm, posted: tuple) -> torch.Tensor | None:
    g, works, keep, incoming, tile = posted
    with comm.phase("halo"):
        comm.wait(works)
        for p, buf in incoming:
            g[p.src.within(tile.owned)] += buf
        return g


# -- backward: the adjoint of scatter -> halo exchange -> compute -> gather --------------------
def scatter_grad(comm: Comm, plan: Plan, grad: torch.Tensor | None, src: int = 0) -> torch.Tensor | None:
    """Adjoint of gather: from the output's gradient on ``src``, every rank's output box of it."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("scatter"):
        if comm.rank == src:
            grad = grad.contiguous()
            works, keep = send_to_workers(comm, plan, grad, src, lambda t: [t.out])
            comm.wait(works)
            return None if tile is None else grad[tile.out.slices()]
        if tile is None:
            return None
        buf = torch.empty(tile.out.shape, dtype=recv_dtype(comm, src), device=comm.device)
        comm.wait(recv_box(comm, buf, tile.out, plan.spec.output_shape, src, "scatter"))
        return buf


def tile_backward(comm: Comm, plan: Plan, window: torch.Tensor | None, weight: torch.Tensor | None,
                  grad: torch.Tensor | None, needs) -> tuple:
    """This rank's (window, filter, bias) gradients from its output box's gradient."""
    tile = plan.tile_of(comm.rank)
    if tile is None:
        return None, None, None
    with comm.phase("compute"):
        return one_tile.tile_backward(plan, tile, window, weight, grad, needs)


def reduce_grads(comm: Comm, plan: Plan, grads: tuple, whole: tuple | None = None, dst: int = 0) -> None:
    """Adjoint of scatter + halo exchange for the master's engine: every rank's window, filter
    and bias gradients (``grads``, None where not wanted) go to ``dst``, which adds them into
    ``whole`` = (gx, gw, gb) in rank order (the same bits every run)."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("gather"):
        if comm.rank != dst:
            if tile is not None:
                keep = [g.contiguous() for g in grads if g is not None]
                comm.wait([comm.isend(g, dst, "gather") for g in keep])
            return
        incoming = {}
        for t in plan.tiles:
            if t.rank == dst:
                incoming[t.rank] = grads
                continue
            c0, c1 = plan.weight_box(t)
            shapes = (t.window.shape, (c1 - c0, *plan.spec.weight_shape[1:]), (c1 - c0,))
            bufs = tuple(None if w is None else torch.empty(shape, dtype=w.dtype, device=w.device)
                         for w, shape in zip(whole, shapes))
            works = [comm.irecv(b, t.rank, "gather") for b in bufs if b is not None]
            incoming[t.rank] = (bufs, works)
        for t in plan.tiles:
            if t.rank == dst:
                add_tile_grads(plan, t, *whole, *grads)
            else:
                bufs, works = incoming[t.rank]
                comm.wait(works)
                add_tile_grads(plan, t, *whole, *bufs)

