"""Dynamic scheduling on a cluster: tiles handed out one at a time to whichever process is
free (``pull``, also the stream engine's), the master half and the worker half."""

from __future__ import annotations

import threading
import time

import torch

from haloconv.compute import backends, kernels
from haloconv.engines.execution import Execution, WorkerStats
from haloconv.engines.processes.cluster import Cluster, check_throttle
from haloconv.engines.processes.worker import worker_op
from haloconv.engines.spmd import master_windows as spmd_windows
from haloconv.engines.spmd import steps as spmd
from haloconv.engines.spmd.comm import Comm
from haloconv.engines.windows import assemble_window
from haloconv.progress import Counter, Progress
from haloconv.tiling.plan import Plan


def pull(cluster: Cluster, todo: list[int], feed, local) -> dict[int, int]:
    """Hand out the tiles ``todo`` to whichever process is free: a feeder thread per
    worker calls ``feed(rank, index, keep)`` (returns once the worker finished the tile;
    index -1 tells it to stop), the master calls ``local(index)`` for the tiles it takes
    itself.  Returns tiles done per rank; the first error stops the hand-out and is raised."""
    lock = threading.Lock()
    errors: list[BaseException] = []
    done: dict[int, int] = {}

    def next_index() -> int:
        with lock:
            return todo.pop(0) if todo and not errors else -1

    def count(rank: int) -> None:
        with lock:
            done[rank] = done.get(rank, 0) + 1

    def feeder(rank: int) -> None:
        try:
            while True:
                keep: list = []  # buffers in flight, alive until the sends complete
                index = next_index()
                feed(rank, index, keep)
                if index < 0:
                    return
                count(rank)
        except BaseException as e:  # noqa: BLE001 - re-raised by the master below
            errors.append(e)

    feeders = [threading.Thread(target=feeder, args=(r,), daemon=True) for r in range(1, cluster.workers)]
    for t in feeders:
        t.start()
    try:
        while (index := next_index()) >= 0:  # the master computes tiles while the workers do
            local(index)
            count(0)
    except (KeyboardInterrupt, SystemExit):
        with lock:
            errors.append(RuntimeError("interrupted"))  # no more tiles handed out
        raise  # at once: the caller stops the workers, which ends the feeders' waits
    except BaseException as e:
        errors.append(e)
    for t in feeders:
        t.join()
    if errors:
        raise errors[0]
    return done


def run_dynamic(cluster: Cluster, plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                throttle: dict[int, float] | None = None, out: torch.Tensor | None = None,
                finished: set[int] | None = None, progress: Progress | None = None) -> Execution:
    """Master/worker with dynamic scheduling, for unequal workers: the plan's tiles (make
    many more than workers) are handed out one at a time to whichever worker is free; the
    master computes tiles too while no worker is waiting.  Exact like any plan.

    ``throttle``: {rank: factor} for this call (see LocalCluster).  ``out`` and
    ``finished`` (tile indices): go on with a run that a failure stopped — only the tiles
    not in ``finished`` are computed, into ``out``; ``finished`` grows as tiles land.
    ``progress(done, total)``: called as each tile lands."""
    if plan.splits[1] != 1:
        raise ValueError("dynamic scheduling hands out tiles of the whole filter bank; use a partition "
                         "without a channels split")
    if x.device.type != "cpu":
        raise ValueError(f"the processes engine takes CPU tensors, got x on {x.device}")
    t_start = time.perf_counter()
    torch_backend = kernels.select_backend(plan.spec, x, weight, bias)
    done: dict[int, int] = {}
    finished = set() if finished is None else finished
    out = torch.empty(plan.spec.output_shape, dtype=x.dtype) if out is None else out
    count = Counter(progress, len(plan.tiles), len(finished))

    def master(comm: Comm) -> torch.Tensor:
        w, b = weight, bias
        xc = x.contiguous()
        armed: set[int] = set()

        def feed(rank: int, index: int, keep: list) -> None:
            if rank not in armed:  # each worker its weights in its own feeder: a stalled one holds up no other
                armed.add(rank)
                spmd_windows.broadcast_weights(comm, plan, weight, bias, x.dtype, to=(rank,))
            works, buf = spmd_windows.hand_out(comm, plan, xc, index, rank, out, keep)
            comm.wait(works)
            if buf is not None:
                out[plan.tiles[index].out.slices()] = buf
            if index >= 0:
                finished.add(index)
                count.tick()

        def local(index: int) -> None:
            tile = plan.tiles[index]
            out[tile.out.slices()] = spmd.compute(comm, plan, assemble_window(xc, tile), w, b, torch_backend, tile)
            finished.add(index)
            count.tick()

        done.update(pull(cluster, [i for i in range(len(plan.tiles)) if i not in finished], feed, local))
        return out

    cmd = {"op": "dynamic", "module": __name__, "plan": plan, "dtype": x.dtype,
           "torch_backend": kernels.backend_name(torch_backend), "throttle": check_throttle(throttle)}
    out, reports = cluster.step(cmd, master)
    stats = [WorkerStats(r, (), 0, {p: v["seconds"] for p, v in rep["traffic"].items() if p != "control"},
                         traffic=rep["traffic"]) for r, rep in sorted(reports.items())]
    ex = Execution(out, plan, "processes-dynamic", backends.label(plan.backend, torch_backend),
                   time.perf_counter() - t_start, stats)
    ex.tiles_done = done  # rank -> tiles it computed
    return ex


@worker_op("dynamic")
def _worker_dynamic(comm: Comm, cmd: dict, shards: dict) -> None:
    plan = cmd["plan"]
    w, b = spmd_windows.broadcast_weights(comm, plan, None, None, cmd["dtype"])
    spmd_windows.dynamic_worker(comm, plan, w, b, kernels.backend_of(cmd["torch_backend"]), cmd["dtype"])
