"""End to end runs on a cluster (the master scatters, workers exchange halos and compute,
the master gathers) and their backward: each operation's master half, then its worker half."""

from __future__ import annotations

import time

import torch

from haloconv.compute import backends, kernels
from haloconv.engines.execution import Execution
from haloconv.engines.processes.cluster import Cluster, exec_of
from haloconv.engines.processes.worker import tile_weights, worker_op
from haloconv.engines.spmd import backward as spmd_backward
from haloconv.engines.spmd import master_windows as spmd_windows
from haloconv.engines.spmd import steps as spmd
from haloconv.engines.spmd.comm import Comm
from haloconv.progress import Counter, Progress
from haloconv.tiling.plan import Plan


def run(cluster: Cluster, plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
        progress: Progress | None = None) -> Execution:
    """End to end: the master scatters, workers exchange halos and compute, the master
    gathers; ``progress(done, total)`` counts the outputs that have arrived."""
    cluster.check_plan(plan)
    if x.device.type != "cpu":
        raise ValueError(f"the processes engine takes CPU tensors, got x on {x.device}")
    t_start = time.perf_counter()
    torch_backend = kernels.select_backend(plan.spec, x, weight, bias)

    def master(comm: Comm) -> torch.Tensor:
        w, b = spmd.distribute_weights(comm, plan, weight, bias, x.dtype)
        in_flight: list = []
        if plan.exchange == "master":  # the master computes while the windows travel
            window = spmd_windows.scatter_windows(comm, plan, x, pending=in_flight)
        else:
            window = spmd.halo_exchange(comm, plan, spmd.scatter(comm, plan, x))
        out = torch.empty(plan.spec.output_shape, dtype=x.dtype)
        posted = spmd.post_gather(comm, plan, out)  # outputs land in `out` as workers finish
        y0 = spmd.compute(comm, plan, window, w, b, torch_backend)
        spmd.finish_gather(comm, plan, posted, out, y0, progress=Counter(progress, len(posted) + 1))
        with comm.phase("scatter"):
            for works, _ in in_flight:
                comm.wait(works)
        return out

    cmd = {"op": "conv", "module": __name__, "plan": plan, "dtype": x.dtype,
           "torch_backend": kernels.backend_name(torch_backend)}
    out, reports = cluster.step(cmd, master)
    return exec_of(out, plan, backends.label(plan.backend, torch_backend), time.perf_counter() - t_start, reports)


@worker_op("conv")
def _worker_run(comm: Comm, cmd: dict, shards: dict) -> None:
    plan = cmd["plan"]
    w, b, torch_backend = tile_weights(comm, cmd)
    if plan.exchange == "master":  # part by part: compute while the rest arrives
        spmd_windows.windows_compute_gather(comm, plan, w, b, torch_backend)
    else:
        window = spmd.halo_exchange(comm, plan, spmd.scatter(comm, plan, None))
        spmd.gather(comm, plan, spmd.compute(comm, plan, window, w, b, torch_backend))


def backward(cluster: Cluster, plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             grad: torch.Tensor, needs: tuple[bool, bool, bool]) -> tuple:
    """Gradients (x, weight, bias; None where ``needs`` says not) of ``plan``'s conv from
    ``grad``, that of its output: every worker gets its window again (scatter, halo
    exchange) and its output box of ``grad``, computes its tile's gradients, and sends
    them to the master, who adds them up in rank order."""
    cluster.check_plan(plan)
    spec = plan.spec
    needs = (bool(needs[0]), bool(needs[1]), bool(needs[2]) and bias is not None)
    whole = (x.new_zeros(spec.input_shape) if needs[0] else None,
             x.new_zeros(spec.weight_shape) if needs[1] else None,
             x.new_zeros(spec.out_channels) if needs[2] else None)

    def master(comm: Comm):
        w, _ = spmd.distribute_weights(comm, plan, weight, bias, x.dtype)
        window = spmd.halo_exchange(comm, plan, spmd.scatter(comm, plan, x))
        grads = spmd_backward.tile_backward(comm, plan, window, w, spmd_backward.scatter_grad(comm, plan, grad), needs)
        spmd_backward.reduce_grads(comm, plan, grads, whole)

    cluster.step({"op": "backward", "module": __name__, "plan": plan, "dtype": x.dtype, "needs": needs}, master)
    return whole


@worker_op("backward")
def _worker_backward(comm: Comm, cmd: dict, shards: dict) -> None:
    plan = cmd["plan"]
    w, _ = spmd.distribute_weights(comm, plan, None, None, cmd["dtype"])
    window = spmd.halo_exchange(comm, plan, spmd.scatter(comm, plan, None))
    grad = spmd_backward.scatter_grad(comm, plan, None)
    grads = spmd_backward.tile_backward(comm, plan, window, w, grad, cmd["needs"])
    spmd_backward.reduce_grads(comm, plan, grads)
