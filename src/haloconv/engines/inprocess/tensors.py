"""Engine 'threads': every tile on a thread pool in this process.

torch releases the GIL inside conv, so tiles run in parallel; each worker thread gets an
equal share of this process's intra-op threads.  Tiles read the shared input directly
(views where possible) and write into one preallocated output.
"""

from __future__ import annotations

import time

import torch

from haloconv.compute import backends, kernels
from haloconv.compute.tile import compute_tile, tile_backward
from haloconv.engines.execution import Execution, WorkerStats
from haloconv.engines.gradients import add_tile_grads
from haloconv.engines.inprocess.helpers import run_each
from haloconv.engines.windows import assemble_window
from haloconv.progress import Counter, Progress
from haloconv.tiling.boxes import Tile
from haloconv.tiling.plan import Plan


def run(
    plan: Plan,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Execution:
    """Every tile in a thread of this process, windows read from ``x`` (views where they
    can be) and outputs written straight into the result.  ``threads``: at most this many
    tiles at once (default: all) — a plan of many more tiles than threads computes the
    same result holding only that many tiles' windows and outputs at a time.
    ``progress(done, total)``: called as each tile is done."""
    _check_threads(threads)
    spec = plan.spec
    t_start = time.perf_counter()
    torch_backend = kernels.select_backend(spec, x, weight, bias)
    out = x.new_empty(spec.output_shape)
    caller_threads = torch.get_num_threads()
    pool = min(threads or len(plan.tiles), len(plan.tiles))
    per = max(1, caller_threads // pool)
    count = Counter(progress, len(plan.tiles))

    def work(tile: Tile) -> WorkerStats:
        torch.set_num_threads(per)
        t0 = time.perf_counter()
        window = assemble_window(x, tile)
        c0, c1 = tile.out.lo[1], tile.out.hi[1]
        w = weight[c0:c1]
        b = None if bias is None else bias[c0:c1]
        t1 = time.perf_counter()
        compute_tile(plan, tile, window, w, b, torch_backend, out=out[tile.out.slices()])  # straight into the result
        t2 = t3 = time.perf_counter()
        count.tick()
        return WorkerStats(
            tile.rank, tile.out.shape, tile.halo_elements,
            {"halo": t1 - t0, "compute": t2 - t1, "write": t3 - t2},
        )

    stats = list(_each_tile(plan, pool, work))
    return Execution(
        output=out,
        plan=plan,
        engine="threads",
        backend=backends.label(plan.backend, torch_backend),
        wall_seconds=time.perf_counter() - t_start,
        workers=stats,
    )


def backward(
    plan: Plan,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    grad: torch.Tensor,
    needs: tuple[bool, bool, bool],
    *,
    threads: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of x, weight and bias from ``grad`` (that of the output), tile by tile:
    each tile's window and filters get their gradient (kernels.conv_tile_backward), added
    into the whole gradients in tile order (the same order, so the same bits, every run)."""
    _check_threads(threads)
    spec = plan.spec
    gx = x.new_zeros(spec.input_shape) if needs[0] else None
    gw = weight.new_zeros(spec.weight_shape) if needs[1] else None
    gb = weight.new_zeros(spec.out_channels) if needs[2] and bias is not None else None
    pool = min(threads or len(plan.tiles), len(plan.tiles))
    per = max(1, torch.get_num_threads() // pool)

    def work(tile: Tile):
        torch.set_num_threads(per)
        c0, c1 = plan.weight_box(tile)
        return tile, tile_backward(plan, tile, assemble_window(x, tile), weight[c0:c1], grad[tile.out.slices()],
                                   (needs[0], needs[1], gb is not None))

    for tile, (g_window, g_w, g_b) in _each_tile(plan, pool, work):
        add_tile_grads(plan, tile, gx, gw, gb, g_window, g_w, g_b)
    return gx, gw, gb


def _each_tile(plan: Plan, pool: int, work):
    """work(tile) for every tile on ``pool`` threads, results in tile order; this thread's
    torch thread count restored after.  No autograd graph is recorded (grad mode is per
    thread: the pool's would record one): gradients come from backward, see
    engines/differentiable.py."""
    caller_threads = torch.get_num_threads()

    def untracked(tile: Tile):
        with torch.no_grad():
            return work(tile)

    try:  # on the threads kept for the process (engines/inprocess/helpers), this one among them
        yield from run_each(untracked, plan.tiles, pool)
    finally:
        torch.set_num_threads(caller_threads)


def _check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
