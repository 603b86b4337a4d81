"""The autograd pieces of sharded layers.

Autograd nodes keep the group handle, never a process group object (one kept alive past
destroy_process_group aborts the interpreter at exit).

Convention (as in tensor-parallel training): a tensor is either *sharded* (each rank
holds its box) or *replicated* (every rank holds the same values, e.g. after a global
reduction, and computes the same loss from it).  The gradient a rank receives for a
sharded tensor is the gradient of the one loss with respect to its shard, so the
contributions of the shards to a shared parameter add up to the single-node gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from haloconv.compute import kernels
from haloconv.compute.tile import compute_tile, tile_backward, tile_full_grad
from haloconv.distributed import comm_for
from haloconv.engines.gradients import add_window_grad
from haloconv.engines.spmd import backward as spmd_backward
from haloconv.engines.spmd import steps as spmd
from haloconv.engines.spmd.comm import Comm
from haloconv.tiling.boxes import Box, Tile
from haloconv.tiling.plan import Plan


class _HaloWindow(Function):
    """Shard -> this rank's window (shard + halos from the neighbours).  Backward: each
    halo's gradient goes back to its owner and is added into the owner's shard gradient."""

    @staticmethod
    def forward(ctx, x, comm: Comm, plan: Plan):
        ctx.group, ctx.plan = comm.group, plan
        return spmd.halo_exchange(comm, plan, x, copy=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return spmd_backward.halo_reduce(comm_for(ctx.group), ctx.plan, g), None, None


def _window_is_shard(plan: Plan) -> bool:
    """No rank needs anything but its own shard, as it lies (the same answer on every rank)."""
    return all(
        t.window == t.owned and all(p.owner == t.rank and p.dst.lo == tuple(
            a - b for a, b in zip(p.src.lo, t.window.lo)) and set(p.steps) == {1} for p in t.pieces)
        for t in plan.tiles
    )


def halo_window(x: torch.Tensor, comm: Comm, plan: Plan) -> torch.Tensor:
    if _window_is_shard(plan):  # nothing to exchange: the shard is the window
        return x
    return _HaloWindow.apply(x, comm, plan)


class _HaloConv(Function):
    """This rank's conv tile from its shard: halo exchange, then the tile bit for bit like
    the single-node forward.  Only the shard and the received halos are kept for backward
    (the window is rebuilt there), so a rank holds its 1/P of the activations plus halos.
    Backward: torch's convolution_backward on the window, the halos' gradients sent back
    to their owners; with ``reduce``, weight and bias gradients summed over the ranks.

    ``overlap``: the halos travel while the rank computes.  Forward: the interior of the
    tile (Plan.overlap_parts: the outputs that need no halo) is computed between posting the
    halo messages and waiting for them, then the border slabs; each part a tile of its own,
    so the same bits as one tile.  Backward: the window's gradient first, its halo parts
    sent to their owners while the filters' gradients are computed."""

    @staticmethod
    def forward(ctx, x, weight, bias, comm: Comm, plan: Plan, reduce: bool, overlap: bool = False):
        tile = plan.tile_of(comm.rank)
        spmd.check_shard(x, tile, "x")
        inner, borders = plan.overlap_parts(tile) if overlap and tile.out.volume else (None, (tile,))
        with comm.phase("halo"):
            works, keep, incoming = spmd.post_halos(comm, plan, x)
        if tile.out.volume == 0:  # an empty shard: it only lent its input to the neighbours
            comm.wait(works)
            y = x.new_zeros(tile.out.shape)
        elif inner is None:
            with comm.phase("halo"):
                window = spmd.build_window(tile, x, incoming, works)
            y = compute_tile(plan, tile, window, weight, bias, kernels.select_backend(plan.spec, x, weight, bias))
            y = y.clone() if y._base is not None else y  # never hand out a view of the computed window
        else:
            backend = kernels.select_backend(plan.spec, x, weight, bias)
            y = x.new_empty(tile.out.shape)
            with comm.phase("compute"):
                _compute_part(plan, tile, inner, x, [], weight, bias, backend, y)
            with comm.phase("halo"):
                comm.wait(works)
            with comm.phase("compute"):
                for part in borders:
                    _compute_part(plan, tile, part, x, incoming, weight, bias, backend, y)
        ctx.save_for_backward(x, weight, *(b for _, b in incoming))
        ctx.pieces = [p for p, _ in incoming]
        ctx.group, ctx.plan, ctx.reduce, ctx.has_bias = comm.group, plan, reduce, bias is not None
        ctx.overlap = overlap
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, weight, *halos = ctx.saved_tensors
        comm = comm_for(ctx.group)
        tile = ctx.plan.tile_of(comm.rank)
        window = spmd.build_window(tile, x, list(zip(ctx.pieces, halos)))
        need = ctx.needs_input_grad
        posted = None
        if tile.out.volume == 0:  # no output, no gradient of its own (it still reduces)
            g_window, gw = window, torch.zeros_like(weight) if need[1] else None
            gb = weight.new_zeros(weight.shape[0]) if ctx.has_bias and need[2] else None
        elif ctx.overlap and need[0]:  # the halo gradients travel while the filters' are computed
            g = tile_full_grad(ctx.plan, tile, window, g)  # once for both calls
            g_window, _, _ = tile_backward(ctx.plan, tile, window, weight, g, (True, False, False))
            posted = spmd_backward.post_halo_reduce(comm, ctx.plan, g_window)
            _, gw, gb = tile_backward(ctx.plan, tile, window, weight, g, (False, need[1], ctx.has_bias and need[2]))
        else:
            g_window, gw, gb = tile_backward(ctx.plan, tile, window, weight, g,
                                             (need[0], need[1], ctx.has_bias and need[2]))
        del window
        if posted is not None:
            gx = spmd_backward.finish_halo_reduce(comm, posted)
        else:
            gx = spmd_backward.halo_reduce(comm, ctx.plan, g_window) if need[0] else None
        if ctx.reduce and (gw is not None or gb is not None):
            flat = torch.cat([t.reshape(-1) for t in (gw, gb) if t is not None])
            comm.allreduce(flat)  # one message for weight and bias
            if gw is not None:
                gw = flat[: gw.numel()].view_as(gw)
            if gb is not None:
                gb = flat[-gb.numel():]
        return gx, gw, gb, None, None, None, None


def _compute_part(plan: Plan, tile: Tile, part: Tile, x: torch.Tensor, incoming: list, weight, bias, backend,
                  y: torch.Tensor) -> None:
    """``part`` of ``tile`` (Plan.overlap_parts) into its box of ``y``, its window from the
    shard ``x`` and the received halo pieces ``incoming`` [(piece, data)]."""
    window = spmd.part_window(part, tile, x, incoming, plan.spec.input_shape)
    compute_tile(plan, part, window, weight, bias, backend, out=y[part.out.within(tile.out)])


def halo_conv(x, weight, bias, comm: Comm, plan: Plan, reduce: bool, overlap: bool = False) -> torch.Tensor:
    return _HaloConv.apply(x, weight, bias, comm, plan, reduce, overlap)


class _LocalConv(Function):
    """One conv of a deep-halo run (tiling/deep.py): this rank's box of the output from its
    box of the input, no messages — the tile's window built from that box alone (a view where
    it can be), computed like any tile.  Backward: the window's gradient added back into the
    input box's (the run's exchange sends the halo part to its owners), the filters'
    gradients summed over the ranks."""

    @staticmethod
    def forward(ctx, x, weight, bias, comm: Comm, plan: Plan, tile: Tile, reduce: bool = True):
        ctx.group, ctx.plan, ctx.tile, ctx.has_bias, ctx.reduce = comm.group, plan, tile, bias is not None, reduce
        ctx.save_for_backward(x, weight)
        if tile.out.volume == 0:
            return x.new_zeros(tile.out.shape)
        window = spmd.part_window(tile, tile, x, [], plan.spec.input_shape)
        y = compute_tile(plan, tile, window, weight, bias, kernels.select_backend(plan.spec, x, weight, bias))
        return y.clone() if y._base is not None else y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        tile, need = ctx.tile, ctx.needs_input_grad
        if tile.out.volume == 0:
            gx = torch.zeros_like(x) if need[0] else None
            gw, gb = torch.zeros_like(weight), weight.new_zeros(weight.shape[0]) if ctx.has_bias else None
        else:
            window = spmd.part_window(tile, tile, x, [], ctx.plan.spec.input_shape)
            # with ``reduce`` every rank computes and sums the filters' gradients (a collective)
            needs = (need[0], need[1] or ctx.reduce, ctx.has_bias and (need[2] or ctx.reduce))
            g_window, gw, gb = tile_backward(ctx.plan, tile, window, weight, g, needs)
            gx = None
            if need[0]:
                gx = torch.zeros_like(x)
                add_window_grad(gx, tile, g_window, tile.owned)
        if ctx.reduce:
            flat = torch.cat([t.reshape(-1) for t in (gw, gb) if t is not None])
            comm_for(ctx.group).allreduce(flat)  # one message for weight and bias, as _HaloConv's
            gw = flat[: gw.numel()].view_as(gw)
            gb = flat[-gb.numel():] if gb is not None else None
        return gx, gw if need[1] else None, gb if need[2] else None, None, None, None, None


def local_conv(x, weight, bias, comm: Comm, plan: Plan, tile: Tile, reduce: bool = True) -> torch.Tensor:
    return _LocalConv.apply(x, weight, bias, comm, plan, tile, reduce)


class _ReduceOnce(Function):
    """Identity on the filters (and biases) of a sequence of sharded convs; in backward, once
    every one of them has its gradient from this rank's shard, one all-reduce sums them all
    over the ranks (the convs do not reduce their own): one message per step instead of one
    per conv, as DistributedDataParallel's buckets."""

    @staticmethod
    def forward(ctx, group, *params):
        ctx.group = group
        return tuple(p.view_as(p) for p in params)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        flat = torch.cat([g.reshape(-1) for g in grads])
        comm_for(ctx.group).allreduce(flat)
        out, at = [], 0
        for g in grads:
            out.append(flat[at:at + g.numel()].view_as(g))
            at += g.numel()
        return (None, *out)


def reduce_once(params: list, comm: Comm) -> list:
    """``params`` as tensors whose gradients are summed over the ranks in one all-reduce."""
    return list(_ReduceOnce.apply(comm.group, *params))


class _SumShards(Function):
    """Sharded partial sums -> their replicated total.  Backward: every rank already holds
    the gradient of the replicated result, which is its partial's gradient."""

    @staticmethod
    def forward(ctx, x, comm: Comm):
        return comm.allreduce(x.clone())

    @staticmethod
    def backward(ctx, g):
        return g, None


def sum_shards(x: torch.Tensor, comm: Comm) -> torch.Tensor:
    return _SumShards.apply(x, comm)


class _ReplicateGrad(Function):
    """Identity on a replicated tensor used by every rank for a different part of the
    work (filter partition): its gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x, comm: Comm):
        ctx.group = comm.group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return comm_for(ctx.group).allreduce(g.clone()), None


def replicate_grad(x: torch.Tensor, comm: Comm) -> torch.Tensor:
    return _ReplicateGrad.apply(x, comm)


class _Shard(Function):
    """Replicated whole tensor -> this rank's box of it."""

    @staticmethod
    def forward(ctx, x, comm: Comm, box: Box):
        ctx.group, ctx.box, ctx.shape = comm.group, box, x.shape
        return x[box.slices()].clone()

    @staticmethod
    def backward(ctx, g):
        full = g.new_zeros(ctx.shape)
        full[ctx.box.slices()] = g
        return comm_for(ctx.group).allreduce(full), None, None


class _Unshard(Function):
    """Shards -> the replicated whole tensor (boxes disjoint: the sum is a concatenation)."""

    @staticmethod
    def forward(ctx, x, comm: Comm, box: Box, shape):
        ctx.box = box
        full = x.new_zeros(shape)
        full[box.slices()] = x
        return comm.allreduce(full)

    @staticmethod
    def backward(ctx, g):
        return g[ctx.box.slices()], None, None, None


class _SyncBatchNorm(Function):
    """Batch normalisation with the statistics of the whole activation (all shards):
    forward two all-reduces (sums, then centred squares), backward one."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, comm: Comm, owned=None):
        dims = [0, *range(2, x.dim())]
        view = (1, -1) + (1,) * (x.dim() - 2)
        xo = x if owned is None else x[owned]  # a deep run's box: the statistics of the shard only
        s = torch.cat([xo.sum(dims), x.new_tensor([xo.numel() // x.shape[1]])])
        comm.allreduce(s)
        n = s[-1]
        mean = s[:-1] / n
        xc = x - mean.view(view)
        xco = xc if owned is None else xc[owned]
        var = comm.allreduce((xco * xco).sum(dims)) / n
        invstd = torch.rsqrt(var + eps)
        xhat = xc * invstd.view(view)
        y = xhat if weight is None else xhat * weight.view(view) + bias.view(view)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.group, ctx.n, ctx.owned = comm.group, n, owned
        ctx.mark_non_differentiable(mean, var, n)
        return y, mean, var, n

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, _gm, _gv, _gn):
        xhat, invstd, weight = ctx.saved_tensors
        dims = [0, *range(2, gy.dim())]
        view = (1, -1) + (1,) * (gy.dim() - 2)
        sums = comm_for(ctx.group).allreduce(torch.cat([gy.sum(dims), (gy * xhat).sum(dims)]))
        sum_dy, sum_dy_xhat = sums.chunk(2)
        scale = invstd if weight is None else invstd * weight
        if ctx.owned is None:
            gx = (gy - (sum_dy / ctx.n).view(view) - xhat * (sum_dy_xhat / ctx.n).view(view)) * scale.view(view)
        else:  # only the shard made the statistics: only it gets their gradient (every copy its own)
            o = ctx.owned
            gx = gy * scale.view(view)
            gx[o] -= ((sum_dy / ctx.n).view(view) + xhat[o] * (sum_dy_xhat / ctx.n).view(view)) * scale.view(view)
        # the sums are over every shard already: each rank holds the full parameter gradient
        gw = sum_dy_xhat if weight is not None else None
        gb = sum_dy if weight is not None else None
        return gx, gw, gb, None, None, None


def sync_batch_norm(x, weight, bias, eps: float, comm: Comm, owned=None):
    """(y, batch mean, biased batch variance, count) over every shard; ``owned`` (slices):
    of ``x``, a deep run's box, the part that is this rank's shard (the statistics' only
    contribution; the rest is the neighbours' and normalised alike)."""
    return _SyncBatchNorm.apply(x, weight, bias, eps, comm, owned)


def pool_tile(window: torch.Tensor, plan: Plan, rank: int, kind: str, kernel, stride, dilation,
              count_include_pad: bool = True, divisor_override: int | None = None) -> torch.Tensor:
    """Max or average pooling of this rank's tile from its window: the part of the needed
    input that lies in the tensor, padded where it reaches beyond the tensor's border
    (-inf for max, zeros for average), pooled without further padding."""
    tile = plan.tile_of(rank)
    if tile.out.volume == 0:  # an empty shard; a view of the window keeps the graph (its halos' backward)
        return window.reshape(-1)[:0].view(tile.out.shape)
    spatial = plan.spec.spatial
    need, win = tile.needed, tile.window
    lo = [max(a, 0) for a in need.lo[2:]]
    hi = [min(b, n) for b, n in zip(need.hi[2:], spatial)]
    x = window[(slice(None), slice(None), *(slice(a - w, b - w) for a, b, w in zip(lo, hi, win.lo[2:])))]
    pad: list[int] = []
    for a, b, na, nb in zip(reversed(lo), reversed(hi), reversed(need.lo[2:]), reversed(need.hi[2:])):
        pad += [a - na, nb - b]
    squeeze = x.dim() == 3  # 1-D pools run as 2-D with a unit height (avg_pool1d lacks divisor_override)
    if squeeze:
        x, kernel, stride, dilation = x.unsqueeze(2), (1, *kernel), (1, *stride), (1, *dilation)
        pad += [0, 0]
    nd = x.dim() - 2
    if kind == "max":
        x = F.pad(x, pad, value=float("-inf")) if any(pad) else x
        y = (F.max_pool2d if nd == 2 else F.max_pool3d)(x, kernel, stride, 0, dilation)
    else:
        avg = F.avg_pool2d if nd == 2 else F.avg_pool3d
        xp = F.pad(x, pad) if any(pad) else x
        if divisor_override is not None or count_include_pad or not any(pad):
            y = avg(xp, kernel, stride, 0, divisor_override=divisor_override)
        else:  # divide by the elements inside the tensor only, as torch does
            ones = F.pad(torch.ones_like(x[:1, :1]), pad)
            y = avg(xp, kernel, stride, 0, divisor_override=1) / avg(ones, kernel, stride, 0, divisor_override=1)
    return y.squeeze(2) if squeeze else y
