"""Resident shards on a cluster: scatter a tensor, run layers on the shards where they lie
(halo exchange and compute only), gather, free — each operation's master half, then its
worker half."""

from __future__ import annotations

import time

import torch

from haloconv.compute import backends, kernels
from haloconv.engines.processes.cluster import Cluster, exec_of
from haloconv.engines.processes.worker import tile_weights, worker_op
from haloconv.engines.spmd import steps as spmd
from haloconv.engines.spmd.comm import Comm
from haloconv.tiling.plan import Plan


class Sharded:
    """A tensor held as shards in a LocalCluster's processes (boxes: one per rank)."""

    def __init__(self, cluster, sid, shape, boxes, dtype, execution, plan=None):
        self.cluster, self.id, self.shape, self.boxes, self.dtype = cluster, sid, tuple(shape), boxes, dtype
        self.execution = execution  # traffic and time of the step that made it
        self.plan = plan

    def __repr__(self) -> str:
        return f"Sharded(shape={list(self.shape)}, shards={len(self.boxes)}, dtype={self.dtype})"


def _live(cluster: Cluster, x: Sharded) -> None:
    # checked before any command is posted: a refused call leaves the workers in step
    if not isinstance(x, Sharded) or x.cluster is not cluster or x.id not in cluster.shards:
        raise ValueError("x is not a live shard set of this cluster (freed, or from another cluster)")


def scatter(cluster: Cluster, x: torch.Tensor, plan: Plan) -> Sharded:
    """Send every worker its owned box of ``x``; the shards stay in the workers."""
    cluster.check_plan(plan)
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != plan.spec.input_shape or x.device.type != "cpu":
        raise ValueError(f"x must be a CPU tensor of shape {plan.spec.input_shape}")
    sid = cluster.new_id()
    shard, reports = cluster.step({"op": "scatter", "module": __name__, "plan": plan, "id": sid},
                                lambda comm: spmd.scatter(comm, plan, x))
    cluster.shards[sid] = shard
    boxes = tuple(t.owned for t in plan.tiles)
    return Sharded(cluster, sid, plan.spec.input_shape, boxes, x.dtype, exec_of(None, plan, "", 0.0, reports))


@worker_op("scatter")
def _worker_scatter(comm: Comm, cmd: dict, shards: dict) -> None:
    shards[cmd["id"]] = spmd.scatter(comm, cmd["plan"], None)


def conv(cluster: Cluster, x: Sharded, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         plan: Plan) -> Sharded:
    """One layer on resident shards: halo exchange and compute only; the output stays too.

    ``plan`` must own exactly the boxes ``x`` holds (ownership='even' plans of one split
    chain layer to layer)."""
    cluster.check_plan(plan)
    _live(cluster, x)
    owned = tuple(t.owned for t in plan.tiles)
    if owned != x.boxes:
        raise ValueError(
            "plan's owned input boxes differ from the boxes the shards hold; make both layers' plans "
            "with the same partition and ownership='even'"
        )
    torch_backend = kernels.select_backend(plan.spec, torch.empty(0, dtype=x.dtype), weight, bias)
    sid = cluster.new_id()

    def master(comm: Comm):
        w, b = spmd.distribute_weights(comm, plan, weight, bias, x.dtype)
        window = spmd.halo_exchange(comm, plan, cluster.shards[x.id])
        return spmd.compute(comm, plan, window, w, b, torch_backend)

    cmd = {"op": "layer", "module": __name__, "plan": plan, "dtype": x.dtype,
           "torch_backend": kernels.backend_name(torch_backend),
           "src": x.id, "dst": sid}
    t0 = time.perf_counter()
    shard, reports = cluster.step(cmd, master)
    cluster.shards[sid] = shard
    boxes = tuple(t.out for t in plan.tiles)
    ex = exec_of(None, plan, backends.label(plan.backend, torch_backend), time.perf_counter() - t0, reports)
    return Sharded(cluster, sid, plan.spec.output_shape, boxes, x.dtype, ex, plan)


@worker_op("layer")
def _worker_layer(comm: Comm, cmd: dict, shards: dict) -> None:
    plan = cmd["plan"]
    w, b, torch_backend = tile_weights(comm, cmd)
    window = spmd.halo_exchange(comm, plan, shards[cmd["src"]])
    shards[cmd["dst"]] = spmd.compute(comm, plan, window, w, b, torch_backend)


def gather(cluster: Cluster, x: Sharded) -> torch.Tensor:
    """The full tensor the shards make up, on the master."""
    _live(cluster, x)
    if x.plan is None:
        raise ValueError("gather a layer's output (shards made by cluster.conv)")
    plan = x.plan
    out, _ = cluster.step({"op": "gather", "module": __name__, "plan": plan, "id": x.id},
                        lambda comm: spmd.gather(comm, plan, cluster.shards[x.id],
                                                 out=torch.empty(x.shape, dtype=x.dtype)))
    return out


@worker_op("gather")
def _worker_gather(comm: Comm, cmd: dict, shards: dict) -> None:
    spmd.gather(comm, cmd["plan"], shards[cmd["id"]])


def free(cluster: Cluster, *shards: Sharded) -> None:
    for s in shards:
        if s.cluster is not cluster:
            raise ValueError("free() takes shards of this cluster")
    ids = [s.id for s in shards]
    for i in ids:
        cluster.shards.pop(i, None)
    cluster.step({"op": "free", "module": __name__, "ids": ids}, lambda comm: None)


@worker_op("free")
def _worker_free(comm: Comm, cmd: dict, shards: dict) -> None:
    for i in cmd["ids"]:
        shards.pop(i, None)
