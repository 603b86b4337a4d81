"""Between whole tensors and shards: which box a rank holds, and differentiable
shard/unshard of a replicated tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from haloconv import distributed
from haloconv.nn import functional as hf
from haloconv.nn.layout import Layout
from haloconv.tiling.boxes import Box


def layout_for(partition, group=None, worker_weights=None) -> tuple[Layout, object]:
    """The Layout of ``partition`` over ``group``, and this rank's Comm on it."""
    comm = distributed.comm_for(group)
    part = tuple(partition) if isinstance(partition, (list, tuple)) else partition
    return Layout(part, comm.world, tuple(worker_weights) if worker_weights is not None else None), comm


def local_box(shape: Sequence[int], partition="grid", group=None, worker_weights=None) -> tuple[slice, ...]:
    """The slices of a tensor of ``shape`` this rank holds: read just those from a file.

    Parameters
    ----------
    shape : sequence of int
        The whole tensor's, (N, C, *spatial).
    partition : str or sequence of int
        As the layers' ('grid' by default).
    group : ProcessGroup, optional
        Default: torch.distributed's default group.
    worker_weights : sequence of float, optional

    Returns
    -------
    tuple of slice

    Examples
    --------
    >>> import torch, torch.distributed as dist, haloconv.nn as hnn
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # torchrun makes yours
    >>> hnn.local_box((1, 3, 64, 48), "rows")
    (slice(0, 1, None), slice(0, 3, None), slice(0, 64, None), slice(0, 48, None))
    >>> dist.destroy_process_group()
    """
    layout, comm = layout_for(partition, group, worker_weights)
    return layout.boxes(tuple(shape))[comm.rank].slices()


def shard(x: torch.Tensor, partition="grid", group=None, worker_weights=None) -> torch.Tensor:
    """This rank's shard of ``x`` (the same whole tensor on every rank).

    Differentiable: the gradient of ``x`` is assembled from every rank's shard gradient.
    With partition='channels' every rank keeps all of ``x`` (the filters are split).

    Parameters
    ----------
    x : torch.Tensor
        (N, C, *spatial), the same on every rank.
    partition, group, worker_weights
        As local_box's.

    Returns
    -------
    torch.Tensor
        This rank's box of ``x`` (local_box).

    Examples
    --------
    >>> import torch, torch.distributed as dist, haloconv.nn as hnn
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # torchrun makes yours
    >>> x = torch.randn(1, 2, 16, 16, requires_grad=True)
    >>> part = hnn.shard(x, "grid")
    >>> part.shape, torch.equal(hnn.unshard(part, "grid"), x)
    (torch.Size([1, 2, 16, 16]), True)
    >>> dist.destroy_process_group()
    """
    layout, comm = layout_for(partition, group, worker_weights)
    if layout.replicated_input:  # the layer sums its input's gradient over the ranks itself
        return x
    return hf._Shard.apply(x, comm, layout.boxes(tuple(x.shape))[comm.rank])


def unshard(x: torch.Tensor, partition="grid", group=None, worker_weights=None) -> torch.Tensor:
    """The whole tensor, on every rank, from each rank's shard ``x``.  Differentiable.

    Parameters
    ----------
    x : torch.Tensor
        This rank's shard (with partition='channels': its block of output channels).
    partition, group, worker_weights
        As local_box's.

    Returns
    -------
    torch.Tensor
        The whole tensor, the same on every rank.

    Examples
    --------
    See shard.
    """
    layout, comm = layout_for(partition, group, worker_weights)
    shapes = layout.gather_shapes(comm, x.shape)
    if layout.replicated_input:  # the filter blocks follow each other in rank order
        c0 = sum(s[1] for s in shapes[: comm.rank])
        shape = (shapes[0][0], sum(s[1] for s in shapes), *shapes[0][2:])
        lo = (0, c0, *(0,) * (x.dim() - 2))
        box = Box(lo, (shape[0], c0 + x.shape[1], *shape[2:]))
    else:
        shape = layout.global_shape(shapes)
        box = layout.boxes(shape)[comm.rank]
    return hf._Unshard.apply(x, comm, box, shape)
