"""Speed probes on a cluster: every process computing the same small problem at once
(relative speeds for weighted splits; calibrate's concurrency curve); the one-tile call
they and calibrate time (as_one_tile)."""

from __future__ import annotations

import dataclasses
import time

import torch

from haloconv.compute import kernels
from haloconv.compute.tile import compute_tile
from haloconv.engines.processes.cluster import Cluster
from haloconv.engines.processes.worker import worker_op
from haloconv.engines.spmd.comm import Comm
from haloconv.engines.windows import assemble_window
from haloconv.tiling.plan import make_plan
from haloconv.tiling.spec import ConvSpec


def speeds(cluster: Cluster, spec: ConvSpec, dtype: torch.dtype = torch.float32, backend: str = "torch",
           repeat: int = 3) -> list[float]:
    """Relative compute speed of every process (1.0 = the fastest), measured by all of
    them at once on the same small problem like ``spec`` (about a 1/16 row band of it):
    weights for a static split over unequal workers (``worker_weights``)."""
    small = probe_spec(spec, cluster.workers)
    tb = caller_backend(small, dtype)
    cmd = {"op": "probe", "module": __name__, "spec": small, "dtype": dtype, "method": backend, "repeat": repeat,
           "torch_backend": tb}
    (seconds, _), reports = cluster.step(cmd, lambda comm: probe(comm, small, dtype, backend, repeat,
                                                                    torch_backend=tb))
    times = [seconds] + [reports[r]["probe_seconds"] for r in range(1, cluster.workers)]
    return [min(times) / t for t in times]


def throughput(cluster: Cluster, spec: ConvSpec, busy: int, repeat: int, dtype: torch.dtype = torch.float32,
               backend: str = "torch") -> float:
    """Seconds the first ``busy`` processes (the master among them) take to each compute
    ``spec`` ``repeat`` times back to back, all at once (the slowest one): how the
    cores are shared by that many busy processes (calibrate's concurrency curve)."""
    if isinstance(busy, bool) or not isinstance(busy, int) or not 1 <= busy <= cluster.workers:
        raise ValueError(f"busy must be an int from 1 to {cluster.workers}, got {busy!r}")
    tb = caller_backend(spec, dtype)
    cmd = {"op": "probe", "module": __name__, "spec": spec, "dtype": dtype, "method": backend, "repeat": repeat,
           "busy": busy, "torch_backend": tb}
    (_, total), reports = cluster.step(cmd, lambda comm: probe(comm, spec, dtype, backend, repeat, busy, tb))
    return max(total, *(reports[r]["probe_total"] for r in range(1, cluster.workers)))


@worker_op("probe")
def _worker_probe(comm: Comm, cmd: dict, shards: dict) -> dict:
    best, total = probe(comm, cmd["spec"], cmd["dtype"], cmd["method"], cmd["repeat"], cmd.get("busy"),
                             cmd.get("torch_backend"))
    return {"probe_seconds": best, "probe_total": total}


def caller_backend(spec: ConvSpec, dtype: torch.dtype) -> str:
    """The torch conv backend a run of ``spec`` computes its tiles with: selected here, at the
    caller's thread count, as LocalCluster.run does."""
    return kernels.backend_name(kernels.select_backend(spec, torch.empty(0, dtype=dtype),
                                                       torch.empty(0, dtype=dtype), None))


def probe_spec(spec: ConvSpec, workers: int) -> ConvSpec:
    """``spec`` on one sample and a band of its first spatial axis: about 1/16 of the work
    of one worker's share, and at least a few kernel spans."""
    axis = spec.axis(0)
    rows = max(4 * axis.span, spec.spatial[0] // (16 * workers))
    shape = (1, spec.in_channels, min(rows, spec.spatial[0]), *spec.spatial[1:])
    return dataclasses.replace(spec, input_shape=shape)


def probe(comm: Comm, spec, dtype: torch.dtype, method: str, repeat: int, busy: int | None = None,
          torch_backend: str | None = None) -> tuple[float, float]:
    """(best, total) seconds of this rank computing ``spec`` ``repeat`` times back to back on
    random data (at its pace): the measures behind LocalCluster.speeds and .throughput.
    ``torch_backend``: the torch conv backend (kernels.backend_name) the caller selected, which
    a tile computes with; torch itself would pick at this rank's thread count, and for some
    1-D, 1x1 and 3-D shapes pick another.  Ranks from ``busy`` on stay idle and return (0, 0)."""
    if busy is not None and comm.rank >= busy:
        return 0.0, 0.0
    g = torch.Generator().manual_seed(comm.rank)
    x = torch.randn(spec.input_shape, generator=g, dtype=dtype)
    w = torch.randn(spec.weight_shape, generator=g, dtype=dtype)
    once = as_one_tile(method, spec, x, w, None if torch_backend is None else kernels.backend_of(torch_backend))
    once()  # warm-up: buffers faulted in, the primitive built
    best, t_start = float("inf"), time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        once()
        comm.pace(t0)
        best = min(best, time.perf_counter() - t0)
    return best, time.perf_counter() - t_start


def as_one_tile(method: str, spec, x: torch.Tensor, weight: torch.Tensor, torch_backend: object):
    """A call computing all of ``spec`` on ``x`` as a one-tile plan's tile, the way a worker
    computes a tile (its window, ``torch_backend``): what calibrate and the speed probes time."""
    plan = make_plan(spec, "batch", 1, backend=method)
    tile = plan.tiles[0]
    window = assemble_window(x, tile)  # a view when it can be
    return lambda: compute_tile(plan, tile, window, weight, None, torch_backend)
