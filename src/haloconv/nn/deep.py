"""A parallelized nn.Sequential: shapes known once per forward, and deep halos.

``ShardedSequential`` is what ``parallelize`` makes of an ``nn.Sequential`` (same children,
same state_dict keys).  It learns the whole input's shape once (one small all-reduce) and
hands each sharded child its input's shape, so its layers do not each all-reduce their
shard shapes.  With ``halo_depth`` > 1 a run of up to that many consecutive convolutions —
with element-wise layers and batch norms between them — exchanges one halo deep enough for
the whole run, and each rank computes the rows its neighbours own redundantly
(tiling/deep.py).  Which layers join a run:

- convolutions of the same layout (not the filter partition; not circular padding, whose
  wrapped rows are not near the shard);
- element-wise layers (not dropout: a copy of a neighbour's rows would draw its own mask);
- batch norms: each rank's statistics come from its own shard only (all-reduced as usual),
  and normalise the copies too; backward sends the statistics' gradient to the shard only,
  each copy its own direct term (nn/functional._SyncBatchNorm with ``owned``);
- a pooling ends a run (it runs on its own, with its halo).

``halo_depth='auto'``: the cost model predicts a training step at each depth from the
shapes, the calibrated profile and the link (messages x latency + bytes / bandwidth, the
redundant compute) and rank 0's choice is broadcast.  See docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
import torch.nn as nn

from haloconv import distributed
from haloconv.costmodel import cost
from haloconv.engines.spmd.comm import Link
from haloconv.nn import functional as hf
from haloconv.nn import modules as m
from haloconv.tiling import deep

ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)
_RANDOM = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_SHAPE_KEEPING = (*ELEMENTWISE, m._DistributedBatchNormNd)


def check_depth(halo_depth):
    if halo_depth != "auto" and not (isinstance(halo_depth, int) and not isinstance(halo_depth, bool)
                                     and halo_depth >= 1):
        raise ValueError(f"halo_depth must be 'auto' or an int >= 1, got {halo_depth!r}")
    return halo_depth


def _role(layer: nn.Module) -> str | None:
    """'conv', 'keep' (shape-keeping, may sit inside a run) or None (ends a run)."""
    if isinstance(layer, m.DistributedConvNd):
        return "conv" if not layer.layout.replicated_input and layer.padding_mode != "circular" else None
    if isinstance(layer, _SHAPE_KEEPING) and not isinstance(layer, _RANDOM):
        return "keep"
    return None


def segments(layers: list[nn.Module], depth: int) -> list[tuple[int, ...]]:
    """Indices of ``layers`` grouped: a deep run (2 to ``depth`` convolutions of one layout,
    from its first conv to its last) or one layer."""
    out: list[tuple[int, ...]] = []
    i = 0
    while i < len(layers):
        if depth > 1 and _role(layers[i]) == "conv":
            convs, last, j = 0, i, i
            while j < len(layers) and (role := _role(layers[j])) is not None:
                if role == "conv":
                    if convs == depth or layers[j].layout != layers[i].layout or layers[j].group is not layers[i].group:
                        break
                    convs, last = convs + 1, j
                j += 1
            if convs >= 2:
                out.append(tuple(range(i, last + 1)))
                i = last + 1
                continue
        out.append((i,))
        i += 1
    return out


def output_shape(layer: nn.Module, shape):
    """The whole output's shape of a layer on shards from its input's (None: not known here,
    e.g. after a global pool or inside a module of the user's own)."""
    if shape is None:
        return None
    if isinstance(layer, (m.DistributedConvNd, m._DistributedPoolNd)):
        return tuple(layer.spec_for(shape).output_shape)
    if isinstance(layer, _SHAPE_KEEPING):
        return tuple(shape)
    if isinstance(layer, ShardedSequential):
        for child in layer:
            shape = output_shape(child, shape)
        return shape
    return None


def _run_steps(layers, shape):
    steps, shapes = [], [tuple(shape)]
    for layer in layers:
        steps.append(layer.spec_for(shapes[-1]) if isinstance(layer, m.DistributedConvNd) else None)
        shapes.append(tuple(steps[-1].output_shape) if steps[-1] is not None else shapes[-1])
    return tuple(steps), shapes


def plan_run(layers, shape) -> tuple[deep.DeepRun, list]:
    """The DeepRun of ``layers`` (a segment) on an input of whole ``shape``, and the whole
    shape of every activation."""
    steps, shapes = _run_steps(layers, shape)
    layout = layers[0].layout
    return deep.deep_run(steps, tuple(tuple(layout.boxes(s)) for s in shapes)), shapes


def run_forward(layers, x: torch.Tensor, shape, params: dict | None = None) -> torch.Tensor:
    """A deep run on this rank's shard ``x`` of an input of whole ``shape``: one exchange,
    then every layer on this rank's (overlapping) boxes; returns the shard of the output.
    ``params``: per layer, (weight, bias) whose gradients the caller reduces."""
    comm = distributed.comm_for(layers[0].group)
    layout = layers[0].layout
    run, shapes = plan_run(layers, shape)
    r = comm.rank
    x = hf.halo_window(x, comm, run.exchange)
    for i, (layer, spec) in enumerate(zip(layers, run.steps)):
        if spec is not None:
            given = (params or {}).get(id(layer))
            w, b = given if given is not None else (layer.weight, layer.bias)
            x = hf.local_conv(x, w, b, comm, layout.plan(spec), run.tiles[r][i], reduce=given is None)
        elif isinstance(layer, m._DistributedBatchNormNd):
            x = layer.normalize(x, layout.boxes(shapes[i])[r].within(run.boxes[r][i]))
        else:
            x = layer(x)
    return x


def _link_profile() -> cost.Profile:
    """The calibrated profile at this process's link (the transport plus $HALOCONV_LINK)."""
    profile = cost.load_profile()
    link = Link.from_env()
    if link is not None:
        profile = dataclasses.replace(profile, latency_s=profile.latency_s + link.latency_s,
                                      bandwidth_Bps=min(profile.bandwidth_Bps, link.bandwidth_Bps or math.inf))
    return profile


def predict_depths(layers, shape, ranks: int, itemsize: int, profile: cost.Profile | None = None) -> dict[int, float]:
    """Predicted seconds of a training step of ``layers`` (the slowest rank) per halo depth:
    each run's exchange and convs (cost.deep_step_seconds, with the ranks that share this
    machine: torchrun's LOCAL_WORLD_SIZE) and the one all-reduce of the filters' gradients."""
    profile = profile or _link_profile()
    convs = sum(isinstance(x, m.DistributedConvNd) for x in layers)
    busy = int(os.environ.get("LOCAL_WORLD_SIZE", ranks))
    grads = sum(p.numel() for x in layers if isinstance(x, m.DistributedConvNd) for p in x.parameters())
    reduce_s = cost.allreduce_seconds(grads * itemsize, ranks, profile)
    out = {}
    for depth in range(1, max(convs, 1) + 1):
        total, s = [0.0] * ranks, tuple(shape)
        for seg in segments(layers, depth):
            part = [layers[i] for i in seg]
            if _role(part[0]) == "conv":  # one conv or a run: one exchange, its convs on boxes
                run = plan_run(part, s)[0]
                for r in range(ranks):
                    total[r] += cost.deep_step_seconds(run, r, profile, itemsize, busy)
            for layer in part:
                s = output_shape(layer, s)
            if s is None:
                break
        out[depth] = max(total) + reduce_s
    return out


class ShardedSequential(nn.Sequential):
    """An nn.Sequential of layers on shards (made by ``parallelize``): the input's whole shape
    learnt once per forward and handed to its layers; runs of convolutions with one deep
    halo each (``halo_depth``)."""

    halo_depth: int | str = 1

    def _layout_child(self):
        return next((c for c in self if isinstance(c, m._Sharded)), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.__dict__.pop("_given_shape", None)
        first = self._layout_child()
        if first is None:
            return super().forward(x)
        if shape is None:
            shape = _whole_shape(first, x)
        layers = list(self)
        depth = self._depth(layers, shape, x.element_size())
        params = _reduced_once(layers)
        for seg in segments(layers, depth):
            if len(seg) > 1:
                if shape is None:  # after a module of the user's own: learn it again
                    shape = _whole_shape(layers[seg[0]], x)
                x = run_forward([layers[i] for i in seg], x, shape, params)
                for i in seg:
                    shape = output_shape(layers[i], shape)
                continue
            layer = layers[seg[0]]
            x = _call_with_shape(layer, x, shape, params.get(id(layer)))
            shape = output_shape(layer, shape)
        return x

    def _depth(self, layers, shape, itemsize: int) -> int:
        if self.halo_depth != "auto":
            return self.halo_depth
        known = self.__dict__.setdefault("_auto_depth", {})
        key = (tuple(shape), itemsize, Link.from_env())
        if key not in known:
            comm = distributed.comm_for(self._layout_child().group)
            pick = 0
            if comm.rank == 0:  # one choice for every rank (profiles may differ between machines)
                times = predict_depths(layers, shape, comm.world, itemsize)
                pick = min(times, key=lambda d: (times[d], d))
            known[key] = int(comm.allreduce(torch.tensor([pick], device=comm.device)).item())
        return known[key]

    def extra_repr(self) -> str:
        return f"halo_depth={self.halo_depth!r}"


def _whole_shape(layer, x: torch.Tensor) -> tuple[int, ...]:
    """The whole input's shape from every rank's shard shape, checked against the layout
    (the same error on every rank)."""
    comm = distributed.comm_for(layer.group)
    shapes = layer.layout.gather_shapes(comm, x.shape)
    shape = layer.layout.global_shape(shapes)
    want = [b.shape for b in layer.layout.boxes(shape)]
    for r, (s, w) in enumerate(zip(shapes, want)):
        if tuple(s) != tuple(w):
            raise ValueError(f"{type(layer).__name__}: rank {r} holds a shard of shape {tuple(s)} but "
                             f"partition={layer.layout.partition!r} puts {tuple(w)} there (whole input {shape}); "
                             "use haloconv.nn.shard or local_box")
    return shape


def _reduced_once(layers) -> dict:
    """{id(conv): (weight, bias)} for the sharded convs among ``layers`` that train: views
    whose gradients one all-reduce sums over the ranks in backward (functional.reduce_once),
    so the convs do not each reduce their own."""
    convs = [c for c in layers if isinstance(c, m.DistributedConvNd) and not c.layout.replicated_input
             and c.weight.requires_grad and (c.bias is None or c.bias.requires_grad)]
    if not torch.is_grad_enabled() or not convs or any(c.group is not convs[0].group for c in convs):
        return {}
    flat = [t for c in convs for t in (c.weight, c.bias) if t is not None]
    views = iter(hf.reduce_once(flat, distributed.comm_for(convs[0].group)))
    return {id(c): (next(views), next(views) if c.bias is not None else None) for c in convs}


def _call_with_shape(layer: nn.Module, x: torch.Tensor, shape, params=None) -> torch.Tensor:
    """``layer(x)``, telling a sharded layer its input's whole shape (no all-reduce) when
    known and, for a conv, the (weight, bias) views the Sequential reduces."""
    if not isinstance(layer, (m._Sharded, ShardedSequential)):
        return layer(x)
    if shape is not None:
        layer.__dict__["_given_shape"] = tuple(shape)
    if params is not None:
        layer.__dict__["_given_params"] = params
    try:
        return layer(x)
    finally:
        layer.__dict__.pop("_given_shape", None)
        layer.__dict__.pop("_given_params", None)
