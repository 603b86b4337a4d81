"""Engine 'threads': every tile on a thread pool in this process.

torch releases the GIL inside conv, so tiles run in parallel; each worker thread gets an
equal share of this process's intra-op threads.  Tiles read the shared input directly
(views where possible) and write into one preallocated output.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import torch

from haloconv import kernels, methods
from haloconv.engines.base import Execution, WorkerStats, assemble_window
from haloconv.plan import Plan, Tile


def run(
    plan: Plan,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    threads_per_worker: int | None = None,
    threads: int | None = None,
) -> Execution:
    """Every tile in a thread of this process, windows read from ``x`` (views where they
    can be) and outputs written straight into the result.  ``threads``: at most this many
    tiles at once (default: all) — a plan of many more tiles than threads computes the
    same result holding only that many tiles' windows and outputs at a time."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    spec = plan.spec
    t_start = time.perf_counter()
    backend = kernels.select_backend(spec, x, weight, bias)
    out = x.new_empty(spec.output_shape)
    caller_threads = torch.get_num_threads()
    pool = min(threads or len(plan.tiles), len(plan.tiles))
    per = threads_per_worker or max(1, caller_threads // pool)

    def work(tile: Tile) -> WorkerStats:
        torch.set_num_threads(per)
        t0 = time.perf_counter()
        window = assemble_window(x, tile)
        c0, c1 = tile.out.lo[1], tile.out.hi[1]
        w = weight[c0:c1]
        b = None if bias is None else bias[c0:c1]
        t1 = time.perf_counter()
        y = methods.compute(plan.backend, window, w, b, spec, tile.groups, backend, tile.first, tile.out.shape[2:])
        t2 = time.perf_counter()
        out[tile.out.slices()] = y
        t3 = time.perf_counter()
        return WorkerStats(
            tile.rank, tile.out.shape, tile.halo_elements,
            {"halo": t1 - t0, "compute": t2 - t1, "write": t3 - t2},
        )

    try:
        if len(plan.tiles) == 1:
            stats = [work(plan.tiles[0])]
        else:
            with ThreadPoolExecutor(max_workers=pool, thread_name_prefix="haloconv") as ex:
                stats = list(ex.map(work, plan.tiles))
    finally:
        torch.set_num_threads(caller_threads)
    return Execution(
        output=out,
        plan=plan,
        engine="threads",
        backend=methods.label(plan.backend, backend),
        wall_seconds=time.perf_counter() - t_start,
        workers=stats,
    )
