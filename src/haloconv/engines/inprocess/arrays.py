"""Engine 'threads' on numpy arrays, for the backends that compute arrays (OpenCV's
filter2D and separable passes): every tile on a thread of this process, without torch.

It is the threads engine (engines/inprocess/tensors.py) for image filters: the same windows
(engines/windows.py), the same backend call on each tile (``compute_tile_array``: ``Backend.compute_array``,
which the tensor path calls too), so the same outputs bit for bit — and no torch imported, whose
import alone takes longer than filtering a large image with OpenCV (docs/architecture.md,
"Why filters run without torch").
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

import numpy as np

from haloconv.compute import backends
from haloconv.compute.tile import compute_tile_array
from haloconv.engines.execution import Execution, WorkerStats
from haloconv.engines.host import default_workers, empty
from haloconv.engines.inprocess.helpers import run_each
from haloconv.engines.windows import assemble_window
from haloconv.progress import Counter, Progress
from haloconv.tiling.boxes import Tile
from haloconv.tiling.plan import Plan


def runs(plan: Plan) -> bool:
    """Whether this engine runs ``plan``: its backend computes numpy arrays for its spec."""
    return backends.get(plan.backend).computes_arrays(plan.spec)


@contextmanager
def opencv_threads_kept():
    """OpenCV's thread count (one setting per process) as the caller had it once the block
    ends: the OpenCV backends set it per tile, and a caller's own cv2 calls after ours keep
    theirs.  Nothing imported where cv2 is not."""
    cv2 = sys.modules.get("cv2")
    before = cv2.getNumThreads() if cv2 is not None else None
    try:
        yield
    finally:
        cv2 = sys.modules.get("cv2")
        if cv2 is not None:  # imported by the block: back to OpenCV's default (a negative count)
            cv2.setNumThreads(before if before is not None else -1)


def run(plan: Plan, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *,
        threads: int | None = None, progress: Progress | None = None, out: np.ndarray | None = None,
        dtype=None) -> Execution:
    """Every tile of ``plan`` on a thread of this process, windows read from ``x`` (views
    where they can be), outputs written straight into the result (a numpy array in the
    returned Execution): ``out`` when given (the output's shape and x's dtype, writable;
    a buffer used again costs no page faults), else a new array.  ``threads``: at most this
    many tiles at once (default: all); the cores are shared among them.
    ``progress(done, total)``: called as each tile is done.  ``dtype``: the result's (default
    x's; a backend may take other dtypes than float32/float64, Backend.array_dtypes)."""
    spec = plan.spec
    if not runs(plan):
        raise ValueError(f"backend {plan.backend!r} does not compute numpy arrays for this convolution; "
                         "run it with haloconv.execute")
    if tuple(x.shape) != spec.input_shape or tuple(weight.shape) != spec.weight_shape:
        raise ValueError(f"plan was made for x{list(spec.input_shape)} and weight{list(spec.weight_shape)}, "
                         f"got x{list(x.shape)} and weight{list(weight.shape)}")
    dtype = np.dtype(x.dtype if dtype is None else dtype)
    why = backends.get(plan.backend).array_dtypes(x.dtype, weight.dtype, dtype)
    if why is not None:
        raise TypeError(why)
    if out is not None:
        check_out(out, spec.output_shape, dtype)
    t_start = time.perf_counter()
    out = empty(spec.output_shape, dtype) if out is None else out
    pool = min(threads or len(plan.tiles), len(plan.tiles))
    per = max(1, default_workers() // pool)
    count = Counter(progress, len(plan.tiles))

    def work(tile: Tile) -> WorkerStats:
        t0 = time.perf_counter()
        window = assemble_window(x, tile)
        c0, c1 = plan.weight_box(tile)
        t1 = time.perf_counter()
        compute_tile_array(plan, tile, window, weight[c0:c1], None if bias is None else bias[c0:c1],
                           out[tile.out.slices()], per)
        count.tick()
        return WorkerStats(tile.rank, tile.out.shape, tile.halo_elements,
                           {"halo": t1 - t0, "compute": time.perf_counter() - t1})

    with opencv_threads_kept():
        stats = run_each(work, plan.tiles, pool)
    return Execution(output=out, plan=plan, engine="threads", backend=plan.backend,
                     wall_seconds=time.perf_counter() - t_start, workers=stats)


def check_out(out, shape, dtype) -> None:
    """``out`` must be a writable numpy array of ``shape`` and ``dtype``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray for numpy inputs, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"out must have shape {tuple(shape)} and dtype {np.dtype(dtype)}, "
                         f"got {tuple(out.shape)} {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
