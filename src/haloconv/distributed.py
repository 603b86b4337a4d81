"""SPMD face for code already running in a torch.distributed process group (torchrun).

Every rank calls each function with the same Plan; rank ``r`` holds tile ``r``::

    x_local = haloconv.distributed.scatter(x, plan)           # x on rank 0, None elsewhere
    y_local = haloconv.distributed.conv(x_local, w, b, plan=plan)   # halo exchange inside
    y = haloconv.distributed.gather(y_local, plan)            # full result on rank 0

Shards stay on their ranks between layers: with ``ownership='even'`` plans of the same
split, layer k's output shard is layer k+1's input shard, with no trip through rank 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from haloconv.engines.differentiable import needs_grad
from haloconv.engines.spmd import steps as spmd
from haloconv.engines.spmd.comm import Comm
from haloconv.tiling.plan import Plan

# per process group: the accounting of this rank (a Comm is made per call, so haloconv never
# keeps a process group alive past destroy_process_group)
_STATS: dict[int, dict] = {}


def comm_for(group: object | None = None) -> Comm:
    """This rank's Comm on ``group`` (default: the default group), its accounting kept
    per process group.

    Parameters
    ----------
    group : ProcessGroup, optional

    Returns
    -------
    Comm
        Point-to-point sends and receives that count bytes, messages and seconds.

    Raises
    ------
    RuntimeError
        torch.distributed is not initialised.

    Examples
    --------
    >>> import torch.distributed as dist, haloconv.distributed as hd
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> comm = hd.comm_for()
    >>> comm.rank, comm.world
    (0, 1)
    >>> dist.destroy_process_group()
    """
    if not dist.is_initialized():
        raise RuntimeError("haloconv.distributed needs torch.distributed.init_process_group() first")
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    device = torch.device("cpu")
    nccl = dist.get_backend(group) == "nccl"
    if nccl:
        device = torch.device("cuda", torch.cuda.current_device())
    comm = Comm(pg, rank, world, device, stats=_STATS.get(id(pg)) or {}, group=group)
    comm.batched = comm.batched or nccl
    _STATS[id(pg)] = comm.stats
    return comm


def _comm(plan: Plan, group: object | None) -> Comm:
    comm = comm_for(group)
    if plan.workers > comm.world:
        raise ValueError(f"plan has {plan.workers} workers but the process group has {comm.world} ranks")
    return comm


def scatter(x: torch.Tensor | None, plan: Plan, src: int = 0, group: object | None = None) -> torch.Tensor | None:
    """This rank's owned input box, sent from the full ``x`` on ``src``.

    Parameters
    ----------
    x : torch.Tensor or None
        The whole input on ``src``; None (or anything) elsewhere.
    plan : Plan
        The same on every rank, ``plan.workers`` at most the group's size.
    src : int
    group : ProcessGroup, optional

    Returns
    -------
    torch.Tensor or None
        The box ``plan.tile_of(rank).owned`` of ``x``; None on a rank without a tile.

    Examples
    --------
    On a group of one rank, which owns the whole input (under torchrun each rank gets its box):

    >>> import torch, torch.distributed as dist, haloconv, haloconv.distributed as hd
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> x = torch.randn(1, 2, 30, 20)
    >>> p = haloconv.plan(x.shape, (2, 2, 3, 3), padding=1, partition="rows", workers=1)
    >>> torch.equal(hd.scatter(x, p), x)
    True
    >>> dist.destroy_process_group()
    """
    return spmd.scatter(_comm(plan, group), plan, x, src)


def conv(
    x_local: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    plan: Plan,
    group: object | None = None,
) -> torch.Tensor | None:
    """This rank's output box: halo exchange with the neighbours, then the local conv.

    Forward only (use haloconv.nn to train: its backward is exact).

    Parameters
    ----------
    x_local : torch.Tensor or None
        This rank's owned input box (scatter's result, or read from a file).
    weight, bias : torch.Tensor
        The full tensors, the same on every rank.
    plan : Plan
    group : ProcessGroup, optional

    Returns
    -------
    torch.Tensor or None
        This rank's output box, ``plan.tile_of(rank).out``.

    Raises
    ------
    ValueError
        An input that requires grad; a plan of more workers than ranks.

    Examples
    --------
    The whole SPMD path, here on a group of one rank (under torchrun, every rank runs it):

    >>> import torch, torch.distributed as dist, haloconv, haloconv.distributed as hd
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> x, w = torch.randn(1, 16, 40, 40), torch.randn(16, 16, 3, 3)
    >>> p = haloconv.plan(x.shape, w.shape, padding=1, partition="rows", workers=dist.get_world_size())
    >>> y = hd.gather(hd.conv(hd.scatter(x, p), w, plan=p), p)
    >>> torch.equal(y, torch.nn.functional.conv2d(x, w, padding=1))
    True
    >>> sorted(hd.traffic())[:3]
    ['compute', 'control', 'gather']
    >>> dist.destroy_process_group()
    """
    if needs_grad(x_local, weight, bias):
        raise ValueError("haloconv.distributed.conv is forward-only and an input requires grad: train with "
                         "haloconv.nn (DistributedConv, parallelize), whose backward is exact, or call this "
                         "under torch.no_grad()")
    comm = _comm(plan, group)
    window = spmd.halo_exchange(comm, plan, x_local)
    return spmd.compute(comm, plan, window, weight, bias)


def gather(y_local: torch.Tensor | None, plan: Plan, dst: int = 0, group: object | None = None) -> torch.Tensor | None:
    """The full output on ``dst`` (None on the other ranks).

    Parameters
    ----------
    y_local : torch.Tensor or None
        This rank's output box (conv's result).
    plan : Plan
    dst : int
    group : ProcessGroup, optional

    Returns
    -------
    torch.Tensor or None

    Examples
    --------
    >>> import torch, torch.distributed as dist, haloconv, haloconv.distributed as hd
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> x = torch.randn(1, 2, 30, 20)
    >>> p = haloconv.plan(x.shape, (2, 2, 1, 1), partition="rows", workers=1)  # 1x1: output boxes = input boxes
    >>> torch.equal(hd.gather(hd.scatter(x, p), p), x)
    True
    >>> dist.destroy_process_group()
    """
    return spmd.gather(_comm(plan, group), plan, y_local, dst)


def traffic(group: object | None = None, reset: bool = True) -> dict[str, dict[str, float]]:
    """This rank's bytes, messages and seconds per phase since the last reset.

    Parameters
    ----------
    group : ProcessGroup, optional
    reset : bool
        Start counting afresh after this call.

    Returns
    -------
    dict
        {phase: {'bytes_sent', 'bytes_recv', 'messages_sent', 'messages_recv',
        'seconds'}}, phases as haloconv.tiling.messages.PHASES.

    Examples
    --------
    >>> import torch, torch.distributed as dist, haloconv, haloconv.distributed as hd
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> x, w = torch.randn(1, 16, 24, 24), torch.randn(16, 16, 3, 3)
    >>> p = haloconv.plan(x.shape, w.shape, padding=1, workers=1)
    >>> y = hd.conv(hd.scatter(x, p), w, plan=p)
    >>> hd.traffic()["compute"]["seconds"] > 0
    True
    >>> dist.destroy_process_group()
    """
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    stats = _STATS.pop(id(pg), None) if reset else _STATS.get(id(pg))
    if not stats:
        return {}
    return Comm(pg, dist.get_rank(group), dist.get_world_size(group), stats=stats).report()
