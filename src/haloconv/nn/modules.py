"""Sharded layers: torch's own layer classes with a forward on this rank's shard.

Each subclasses the torch layer it replaces (same arguments, parameters, state_dict keys)
and adds ``partition``, ``group`` and ``worker_weights``.  One N-D implementation per
kind; the 1/2/3-D classes only name the torch class they extend.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from haloconv import distributed
from haloconv.costmodel import cost
from haloconv.engines.spmd.comm import Link
from haloconv.nn import functional as hf
from haloconv.nn.layout import Layout
from haloconv.nn.sharding import layout_for
from haloconv.tiling.geometry import split_extent
from haloconv.tiling.spec import ConvSpec


def _torch_base(cls: type) -> type:
    """The torch layer class a sharded layer extends."""
    return next(c for c in cls.__mro__ if c.__module__.startswith("torch.nn"))


class _Sharded:
    """What every sharded layer shares: its layout, and the plan for the shard it is given."""

    layout: Layout
    group: object | None

    def _set_layout(self, partition, group, worker_weights) -> None:
        self.layout, self.group = layout_for(partition, group, worker_weights)[0], group

    def _plan(self, x: torch.Tensor, spec_of):
        """(comm, plan) for shard ``x``: the whole shape from every rank's shard shape."""
        if x.dim() != self._ndim + 2:
            raise ValueError(f"{type(self).__name__} expects a {self._ndim + 2}-D shard, got shape {tuple(x.shape)}")
        comm = distributed.comm_for(self.group)
        given = self.__dict__.pop("_given_shape", None)  # from a ShardedSequential (nn/deep.py)
        if given is not None:
            plan = self.layout.plan(spec_of(given))
            self.layout.check_local(x.shape, plan, comm.rank, type(self).__name__)
            return comm, plan
        shapes = self.layout.gather_shapes(comm, x.shape)
        plan = self.layout.plan(spec_of(self.layout.global_shape(shapes)))
        self.layout.check(shapes, plan, type(self).__name__)
        return comm, plan

    def extra_repr(self) -> str:
        return super().extra_repr() + f", partition={self.layout.partition!r}"


# -- convolution --------------------------------------------------------------------------
class DistributedConvNd(_Sharded):
    _ndim: int

    def __init__(self, *args, partition="grid", group=None, worker_weights=None, overlap="auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._set_layout(partition, group, worker_weights)
        self.overlap = check_overlap(overlap)
        self._keep_filters()

    def _keep_filters(self) -> None:
        """Filter partition: keep only this rank's filters (and bias)."""
        if not self.layout.replicated_input:
            return
        comm = distributed.comm_for(self.group)
        units = self.groups if self.groups > 1 else self.out_channels
        if units < comm.world:
            raise ValueError(f"partition='channels' needs >= {comm.world} filter groups, the layer has {units}")
        u0, u1 = split_extent(units, comm.world, self.layout.worker_weights)[comm.rank]
        per = self.out_channels // units
        self.filters = (u0 * per, u1 * per)
        self.weight = nn.Parameter(self.weight.detach()[u0 * per:u1 * per].clone())
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.detach()[u0 * per:u1 * per].clone())

    @classmethod
    def from_module(cls, conv: nn.Module, partition="grid", group=None, worker_weights=None, overlap="auto"):
        """Wrap an existing torch conv layer; it shares the layer's parameters (or, with
        the filter partition, copies its own filters)."""
        base = _torch_base(cls)
        if type(conv) is not base:
            raise TypeError(f"{cls.__name__}.from_module needs a {base.__name__}, got {type(conv).__name__}")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device="meta", dtype=conv.weight.dtype,
                  partition=partition, group=group, worker_weights=worker_weights, overlap=overlap)
        new.weight, new.bias = conv.weight, conv.bias
        new._keep_filters()
        new.train(conv.training)
        return new

    def spec_for(self, shape: Sequence[int]) -> ConvSpec:
        return ConvSpec.from_args(
            shape, (self.out_channels, self.in_channels // self.groups, *self.kernel_size),
            (self.out_channels,) if self.bias is not None else None, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, padding_mode=self.padding_mode,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        comm, plan = self._plan(x, self.spec_for)
        weight, bias = self.weight, self.bias
        reduce = not self.layout.replicated_input
        given = self.__dict__.pop("_given_params", None)  # a ShardedSequential reduces them (nn/deep.py)
        if given is not None:
            (weight, bias), reduce = given, False
        if self.layout.replicated_input:  # every rank's filters read the whole input
            x = hf.replicate_grad(x, comm)[plan.tile_of(comm.rank).owned.slices()]
        # spatial/batch shards share the filters: their gradients are summed over the ranks
        overlap = self.overlap if self.overlap != "auto" else _overlap_pays(plan, comm.rank, x.element_size())
        return hf.halo_conv(x, weight, bias, comm, plan, reduce=reduce, overlap=overlap)


# -- docstrings: one template for the layers that differ only in their torch class ----------
_EXAMPLE = """
    Examples
    --------
    >>> import torch, torch.distributed as dist, haloconv.nn as hnn
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # torchrun makes yours
    >>> layer, x = hnn.{name}({args}), torch.randn{shape}
    >>> bool(torch.{compare}(hnn.unshard(layer(hnn.shard(x, "{part}")), "{part}"), {ref}{tol}))
    True
    >>> dist.destroy_process_group()
"""


def _layer_doc(base: str, summary: str, args: str, shape: str, part: str, ref: str | None = None,
               partition: bool = True) -> str:
    """A sharded layer's numpy docstring: ``summary``, torch's arguments and ours, and an
    example that checks the layer on shards against ``ref`` (default: torch's ``base``
    layer) on the whole input."""
    ours = """    partition : str or sequence of int
        'grid' (default), 'rows', 'cols', 'depth' (3-D), 'batch', or split counts over
        (N, C, *spatial).
    group : ProcessGroup, optional
        The ranks that hold the shards (default: torch.distributed's default group).
    worker_weights : sequence of float, optional
        Relative rank speeds: shares in proportion.
""" if partition else """    group : ProcessGroup, optional
        The ranks that hold the shards (default: torch.distributed's default group).
"""
    exact = "Pool" in base or "Conv" in base
    ref = f"torch.nn.{base}({args.split(', partition')[0]})(x)" if ref is None else ref
    example = _EXAMPLE.format(name="Distributed" + base, args=args, shape=shape, part=part, ref=ref,
                              compare="equal" if exact else "allclose", tol="" if exact else ", atol=1e-6")
    return f"""{summary}

    Parameters
    ----------
    *args, **kwargs
        torch.nn.{base}'s.
{ours}{example}    """


def check_overlap(overlap):
    if overlap not in ("auto", True, False):
        raise ValueError(f"overlap must be 'auto', True or False, got {overlap!r}")
    return overlap


def _overlap_pays(plan, rank: int, itemsize: int) -> bool:
    """overlap='auto': whether the cost model predicts this rank's layer faster overlapped,
    at this process's link (the calibrated transport plus $HALOCONV_LINK's delay); kept
    with the plan (the layout caches plans per shape), per link, as halo_depth='auto' is."""
    known = plan.__dict__.setdefault("_overlap_pays", {})
    key = (rank, itemsize, Link.from_env())
    if key not in known:
        known[key] = _predict_overlap(plan, rank, itemsize)
    return known[key]


def _predict_overlap(plan, rank: int, itemsize: int) -> bool:
    profile = cost.load_profile()
    link = Link.from_env()
    if link is not None:
        profile = dataclasses.replace(profile, latency_s=profile.latency_s + link.latency_s,
                                      bandwidth_Bps=min(profile.bandwidth_Bps, link.bandwidth_Bps or math.inf))
    blocking, overlapped = cost.overlap_seconds(plan, rank, profile, itemsize)
    return overlapped < blocking


class DistributedConv1d(DistributedConvNd, nn.Conv1d):
    __doc__ = _layer_doc("Conv1d", "torch.nn.Conv1d on a shard, as DistributedConv2d.",
                         '2, 4, 5, padding=2, partition="cols"', "(1, 2, 100)", "cols",
                         "torch.nn.functional.conv1d(x, layer.weight, layer.bias, padding=2)")

    _ndim = 1


class DistributedConv2d(DistributedConvNd, nn.Conv2d):
    """torch.nn.Conv2d on a shard: halo exchange with the neighbours (forward and
    backward), the tile bit for bit like single node, weight gradients summed over the
    ranks.  Every rank builds the layer alike (same parameters); each calls it on its
    shard (haloconv.nn.shard, or its local_box of a file).

    Parameters
    ----------
    *args, **kwargs
        torch.nn.Conv2d's (in_channels, out_channels, kernel_size, stride, padding,
        dilation, groups, bias, padding_mode).
    partition : str or sequence of int
        'grid' (default), 'rows', 'cols', 'batch', 'channels' (each rank
        its filters; the whole input on every rank), or split counts over
        (N, C, *spatial).
    group : ProcessGroup, optional
        The ranks that hold the shards (default: torch.distributed's default group).
    worker_weights : sequence of float, optional
        Relative rank speeds: shares in proportion.

    Raises
    ------
    ValueError
        A partition the layer cannot take (e.g. 'channels' with fewer filter groups than
        ranks), naming it.

    See Also
    --------
    parallelize : converts every layer of a model.
    DistributedConv1d, DistributedConv3d

    Examples
    --------
    >>> import torch, torch.distributed as dist, haloconv.nn as hnn
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # torchrun makes yours
    >>> torch.manual_seed(0) and None
    >>> conv = hnn.DistributedConv2d(3, 8, 3, padding=1, partition="rows")
    >>> x = torch.randn(2, 3, 32, 32)
    >>> y = hnn.unshard(conv(hnn.shard(x, "rows")), "rows")
    >>> torch.equal(y, torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
    True
    >>> dist.destroy_process_group()
    """

    _ndim = 2


class DistributedConv3d(DistributedConvNd, nn.Conv3d):
    __doc__ = _layer_doc("Conv3d", "torch.nn.Conv3d on a shard, as DistributedConv2d.",
                         '1, 2, 3, padding=1, partition="depth"', "(1, 1, 8, 8, 8)", "depth",
                         "torch.nn.functional.conv3d(x, layer.weight, layer.bias, padding=1)")

    _ndim = 3



# -- batch norm ---------------------------------------------------------------------------
class _DistributedBatchNormNd:
    """Batch statistics over every shard of the batch: equal to single-node BatchNorm."""

    def __init__(self, *args, group=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    @classmethod
    def from_module(cls, bn: nn.Module, group=None):
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta",
                  group=group)
        new.weight, new.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(bn, name))
        new.train(bn.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return self.normalize(x)

    def normalize(self, x: torch.Tensor, owned: tuple[slice, ...] | None = None) -> torch.Tensor:
        """The forward on ``x``, of which ``owned`` (default: all) is this rank's shard and
        the rest a deep-halo run's copy of the neighbours' (nn/deep.py)."""
        if not (self.training or self.running_mean is None):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        y, mean, var, n = hf.sync_batch_norm(x, self.weight, self.bias, self.eps, distributed.comm_for(self.group),
                                             owned)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var * (n / (n - 1)), alpha=m)
        return y


class DistributedBatchNorm1d(_DistributedBatchNormNd, nn.BatchNorm1d):
    __doc__ = _layer_doc("BatchNorm1d", "torch.nn.BatchNorm1d with its batch statistics summed over every shard: in "
                         "training equal to it on the whole batch (running statistics included); in eval the "
                         "running statistics, as torch's.", "2", "(4, 2, 30)", "cols", partition=False)


class DistributedBatchNorm2d(_DistributedBatchNormNd, nn.BatchNorm2d):
    __doc__ = _layer_doc("BatchNorm2d", "torch.nn.BatchNorm2d with its batch statistics summed over every shard: in "
                         "training equal to it on the whole batch (running statistics included); in eval the "
                         "running statistics, as torch's.", "2", "(4, 2, 16, 16)", "rows", partition=False)


class DistributedBatchNorm3d(_DistributedBatchNormNd, nn.BatchNorm3d):
    __doc__ = _layer_doc("BatchNorm3d", "torch.nn.BatchNorm3d with its batch statistics summed over every shard: in "
                         "training equal to it on the whole batch (running statistics included); in eval the "
                         "running statistics, as torch's.", "2", "(2, 2, 6, 6, 6)", "depth", partition=False)


# -- pooling ------------------------------------------------------------------------------
def _ntuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class _DistributedPoolNd(_Sharded):
    """Windowed like a conv: a depthwise 'kernel' of ones gives the plan, the halo comes
    from the neighbours, and the pooling op runs on the window."""

    _kind: str

    def __init__(self, *args, partition="grid", group=None, worker_weights=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._set_layout(partition, group, worker_weights)
        if getattr(self, "ceil_mode", False):
            raise ValueError(f"{type(self).__name__}: ceil_mode=True is not supported on shards")
        if getattr(self, "return_indices", False):
            raise ValueError(f"{type(self).__name__}: return_indices=True is not supported on shards")
        if self.layout.replicated_input:
            raise ValueError(f"{type(self).__name__}: partition='channels' is for convolutions only")
        k, p = _ntuple(self.kernel_size, self._ndim), _ntuple(self.padding, self._ndim)
        d = _ntuple(getattr(self, "dilation", 1), self._ndim)
        for ki, pi, di in zip(k, p, d):
            if pi > ((ki - 1) * di + 1) // 2:
                raise ValueError(f"{type(self).__name__}: padding={self.padding!r} must be at most half the "
                                 f"kernel size {self.kernel_size!r}")

    @classmethod
    def from_module(cls, pool: nn.Module, partition="grid", group=None, worker_weights=None):
        args = {k: getattr(pool, k) for k in cls._args}
        return cls(**args, partition=partition, group=group, worker_weights=worker_weights)

    def spec_for(self, shape: Sequence[int]) -> ConvSpec:
        n = self._ndim
        stride = self.stride if self.stride is not None else self.kernel_size
        return ConvSpec.from_args(shape, (shape[1], 1, *_ntuple(self.kernel_size, n)), None,
                                  stride=_ntuple(stride, n), padding=_ntuple(self.padding, n),
                                  dilation=_ntuple(getattr(self, "dilation", 1), n), groups=shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        comm, plan = self._plan(x, self.spec_for)
        window = hf.halo_window(x, comm, plan)
        s = plan.spec
        return hf.pool_tile(window, plan, comm.rank, self._kind, s.kernel, s.stride, s.dilation,
                            getattr(self, "count_include_pad", True), getattr(self, "divisor_override", None))


def _pool_doc(base: str, args: str, shape: str, part: str) -> str:
    return _layer_doc(base, f"torch.nn.{base} on a shard, with the halo its windows need from the neighbours: "
                      "equal to torch's on the whole input (ceil_mode and return_indices are not supported).",
                      args, shape, part)


_MAX_ARGS = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
_AVG_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")


class DistributedMaxPool1d(_DistributedPoolNd, nn.MaxPool1d):
    __doc__ = _pool_doc("MaxPool1d", '3, stride=2, partition="cols"', "(1, 2, 40)", "cols")

    _ndim, _kind, _args = 1, "max", _MAX_ARGS


class DistributedMaxPool2d(_DistributedPoolNd, nn.MaxPool2d):
    __doc__ = _pool_doc("MaxPool2d", '3, stride=2, padding=1, partition="grid"', "(1, 2, 20, 20)", "grid")

    _ndim, _kind, _args = 2, "max", _MAX_ARGS


class DistributedMaxPool3d(_DistributedPoolNd, nn.MaxPool3d):
    __doc__ = _pool_doc("MaxPool3d", '2, partition="depth"', "(1, 1, 8, 8, 8)", "depth")

    _ndim, _kind, _args = 3, "max", _MAX_ARGS


class DistributedAvgPool1d(_DistributedPoolNd, nn.AvgPool1d):
    __doc__ = _pool_doc("AvgPool1d", '3, stride=2, partition="cols"', "(1, 2, 40)", "cols")

    _ndim, _kind, _args = 1, "avg", _AVG_ARGS


class DistributedAvgPool2d(_DistributedPoolNd, nn.AvgPool2d):
    __doc__ = _pool_doc("AvgPool2d", '3, stride=2, padding=1, partition="grid"', "(1, 2, 20, 20)", "grid")

    _ndim, _kind, _args = 2, "avg", (*_AVG_ARGS, "divisor_override")


class DistributedAvgPool3d(_DistributedPoolNd, nn.AvgPool3d):
    __doc__ = _pool_doc("AvgPool3d", '2, partition="depth"', "(1, 1, 8, 8, 8)", "depth")

    _ndim, _kind, _args = 3, "avg", (*_AVG_ARGS, "divisor_override")


# -- global reductions --------------------------------------------------------------------
class GlobalAvgPool(nn.Module):
    """Sharded (N, C, *spatial) -> replicated (N, C, 1, ...): the mean over every shard,
    as AdaptiveAvgPool{1,2,3}d(1).  The only place a sharded model's activations meet.

    Parameters
    ----------
    ndim : int
        Spatial dims of the shards (1, 2 or 3).
    group : ProcessGroup, optional

    Examples
    --------
    >>> import torch, torch.distributed as dist, haloconv.nn as hnn
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # torchrun makes yours
    >>> x = torch.randn(2, 3, 10, 12)
    >>> bool(torch.allclose(hnn.GlobalAvgPool(2)(hnn.shard(x)), x.mean((2, 3), keepdim=True)))
    True
    >>> dist.destroy_process_group()
    """

    def __init__(self, ndim: int = 2, group=None) -> None:
        super().__init__()
        self.ndim, self.group = ndim, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.ndim + 2:
            raise ValueError(f"GlobalAvgPool expects a {self.ndim + 2}-D shard, got shape {tuple(x.shape)}")
        comm = distributed.comm_for(self.group)
        sums = x.sum(dim=tuple(range(2, x.dim())))
        count = x.new_tensor([math.prod(x.shape[2:])])
        total = hf.sum_shards(torch.cat([sums.reshape(-1), count]), comm)
        return (total[:-1] / total[-1]).view(*x.shape[:2], *([1] * self.ndim))

    def extra_repr(self) -> str:
        return f"ndim={self.ndim}"


def sum_shards(x: torch.Tensor, group=None) -> torch.Tensor:
    """The sum over every rank of a per-shard partial (e.g. a per-shard loss sum): the
    replicated total, whose gradient flows back to every shard.

    Parameters
    ----------
    x : torch.Tensor
        This rank's partial.
    group : ProcessGroup, optional

    Returns
    -------
    torch.Tensor
        The total, the same on every rank.

    Examples
    --------
    >>> import torch, torch.distributed as dist, haloconv.nn as hnn
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # torchrun makes yours
    >>> x = torch.randn(2, 1, 8, 8)
    >>> bool(torch.allclose(hnn.sum_shards(hnn.shard(x).square().sum()), x.square().sum()))
    True
    >>> dist.destroy_process_group()
    """
    return hf.sum_shards(x, distributed.comm_for(group))
