"""parallelize(model): a CNN whose activations stay sharded across the ranks of a group.

Layers that look at neighbours (conv, pooling) become their sharded versions, BatchNorm
synchronizes its statistics over the shards, elementwise layers run on the shard as they
are, and a global average pool is where the shards meet (its output is replicated, so a
Linear head after it runs unchanged on every rank).
"""

from __future__ import annotations

import torch.nn as nn

from haloconv.nn import modules as m
from haloconv.nn.deep import ELEMENTWISE, ShardedSequential, check_depth
from haloconv.tiling.partition import Partition

# run on replicated values only (after the global pool)
HEAD = (nn.Flatten, nn.Linear)

_CONV = {nn.Conv1d: m.DistributedConv1d, nn.Conv2d: m.DistributedConv2d, nn.Conv3d: m.DistributedConv3d}
_BN = {nn.BatchNorm1d: m.DistributedBatchNorm1d, nn.BatchNorm2d: m.DistributedBatchNorm2d,
       nn.BatchNorm3d: m.DistributedBatchNorm3d}
_POOL = {nn.MaxPool1d: m.DistributedMaxPool1d, nn.MaxPool2d: m.DistributedMaxPool2d,
         nn.MaxPool3d: m.DistributedMaxPool3d, nn.AvgPool1d: m.DistributedAvgPool1d,
         nn.AvgPool2d: m.DistributedAvgPool2d, nn.AvgPool3d: m.DistributedAvgPool3d}
_GLOBAL = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}
SUPPORTED = (*_CONV, *_BN, *_POOL, *_GLOBAL, *ELEMENTWISE, *HEAD)


def parallelize(model: nn.Module, partition="grid", group=None, worker_weights=None, overlap="auto",
                halo_depth=1) -> nn.Module:
    """Convert ``model`` (in place; returned) to run on activation shards.

    Every rank calls it on the same model; its convolutions, batch norms and poolings
    become their Distributed versions, sharing the original parameters; element-wise
    layers run on shards as they are.  Training then matches one-process training:
    forward and backward exchange halos, gradients are summed over the ranks.

    Parameters
    ----------
    model : torch.nn.Module
    partition : str or sequence of int
        'grid' (default), 'rows', 'cols', 'depth', or split counts over (N, C, *spatial)
        with N and C unsplit: the ranks hold parts of the same samples (for batch
        parallelism, wrap the model in DistributedDataParallel instead).
    group : ProcessGroup, optional
        Default: torch.distributed's default group.
    worker_weights : sequence of float, optional
        Relative rank speeds: shares in proportion.
    overlap : {'auto', True, False}
        Convolutions compute while their halos travel (forward: the interior of the
        shard; backward: the filters' gradients), with the same results; 'auto': where
        the cost model predicts it faster at this process's link (small shards and fast
        links stay blocking).
    halo_depth : int or 'auto'
        In an nn.Sequential, runs of up to this many consecutive convolutions (with
        element-wise layers and batch norms between them) exchange one halo deep enough
        for the whole run and compute the neighbours' overlapping rows redundantly: fewer
        messages for more compute, the same training.  1 (default): a halo per conv.
        'auto': the depth the cost model predicts fastest at this process's link.  A
        pooling, dropout or circular padding ends a run; a deep run's exchange is
        blocking (``overlap`` applies to single convs).  Inside a run the run computes
        the convs and batch norms (their forward hooks do not fire) and element-wise
        layers see the rank's grown box, not its shard.

    Returns
    -------
    torch.nn.Module
        ``model``, converted.  Feed it ``haloconv.nn.shard(x)`` (or each rank's box of
        the input, ``local_box``); ``unshard`` its output, or end with GlobalAvgPool.

    Raises
    ------
    ValueError
        A partition that splits samples or filters; a layer that cannot run on shards
        (e.g. a pooling with ceil_mode), naming where it is in the model.

    Examples
    --------
    >>> import torch, torch.distributed as dist, haloconv.nn as hnn
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # torchrun makes yours
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
    ...                             torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 16, 3, padding=1))
    >>> x = torch.randn(2, 3, 32, 32)
    >>> ref = model(x)
    >>> model = hnn.parallelize(model, partition="rows")
    >>> torch.equal(hnn.unshard(model(hnn.shard(x, "rows")), "rows"), ref)
    True
    >>> dist.destroy_process_group()
    """
    part = Partition.of(partition)
    if part.kind in ("batch", "channels") or (part.kind == "counts" and len(part.split) > 1
                                              and (part.split[0] > 1 or part.split[1] > 1)):
        raise ValueError(
            f"parallelize: partition={partition!r} splits samples or filters; the model's shards must be parts of "
            "the same samples (use 'grid', 'rows', 'cols', 'depth' or spatial counts)"
        )
    m.check_overlap(overlap)
    check_depth(halo_depth)
    model = _convert(model, "", partition, group, worker_weights, overlap)
    for mod in model.modules():  # every plain nn.Sequential learns shapes once, runs deep halos
        if type(mod) is nn.Sequential:
            mod.__class__ = ShardedSequential
        if isinstance(mod, ShardedSequential):
            mod.halo_depth = halo_depth
    return model


def _convert(mod: nn.Module, path: str, partition, group, weights, overlap="auto") -> nn.Module:
    t = type(mod)
    where = path or "model"
    if t in _CONV:
        return _CONV[t].from_module(mod, partition=partition, group=group, worker_weights=weights, overlap=overlap)
    if t in _BN:
        return _BN[t].from_module(mod, group=group)
    if t in _POOL:
        return _POOL[t].from_module(mod, partition=partition, group=group, worker_weights=weights)
    if t in _GLOBAL:
        size = mod.output_size if isinstance(mod.output_size, tuple) else (mod.output_size,)
        if any(s != 1 for s in size):
            raise ValueError(f"parallelize: {where} ({t.__name__}) has output_size={mod.output_size}; "
                             "only a global pool (output_size=1) is supported on shards")
        return m.GlobalAvgPool(_GLOBAL[t], group=group)
    if isinstance(mod, (*ELEMENTWISE, *HEAD, m.GlobalAvgPool, m._Sharded, m._DistributedBatchNormNd)):
        return mod
    children = list(mod.named_children())
    if not children or any(True for _ in mod.parameters(recurse=False)):
        names = ", ".join(sorted(c.__name__ for c in SUPPORTED))
        raise ValueError(f"parallelize: layer {where} ({t.__name__}) is not supported on sharded activations; "
                         f"supported: {names}, and containers of them")
    reduced = False  # in a Sequential, the head (Linear) must come after the global pool
    for name, child in children:
        sub = f"{path}.{name}" if path else name
        if isinstance(mod, nn.Sequential):
            if isinstance(child, nn.Linear) and not reduced:
                raise ValueError(f"parallelize: layer {sub} (Linear) would see sharded activations; put a global "
                                 "average pool (AdaptiveAvgPool(1)) before it")
            reduced = reduced or type(child) in _GLOBAL or isinstance(child, m.GlobalAvgPool)
        setattr(mod, name, _convert(child, sub, partition, group, weights, overlap))
    return mod
