"""Engine 'processes': worker processes in a torch.distributed gloo group on 127.0.0.1.

The calling process is rank 0, the master: it holds the input, computes tile 0, sends the
other workers their filters and owned boxes, and gathers their outputs.  Workers swap
halos with their neighbours point to point (or get whole windows from the master, when
the Plan says exchange='master').  A LocalCluster keeps its workers between calls, so
the start-up (mostly importing torch) is paid once.  Its lifecycle is engines/processes/cluster.py;
each operation (master and worker halves) is in engines/processes/ops/.
"""

from __future__ import annotations

import logging

import torch

from haloconv.engines.errors import WorkerError
from haloconv.engines.execution import Execution
from haloconv.engines.processes.cluster import Cluster, check_on_failure, retriable
from haloconv.engines.processes.ops import dynamic, probes, resident, static
from haloconv.engines.processes.ops.resident import Sharded
from haloconv.options import RunOptions
from haloconv.progress import Progress
from haloconv.tiling.partition import replanned
from haloconv.tiling.plan import Plan, make_plan
from haloconv.tiling.spec import ConvSpec

log = logging.getLogger(__name__)

__all__ = ["LocalCluster", "Sharded", "WorkerError", "run", "run_backward"]


class LocalCluster(Cluster):
    """A pool of worker processes on this machine, in one gloo process group, kept
    between calls (so the start-up, mostly importing torch, is paid once).

    Parameters
    ----------
    workers : int, optional
        Processes, this one (the master, rank 0) included (default: the cores).
    timeout : float
        Seconds that bound every wait on a worker: one that dies or hangs makes the call
        raise WorkerError within it.
    threads_per_worker : int
        torch threads of each process.
    start_timeout : float
        Seconds for the workers to start and join the group.
    throttle : dict, optional
        {rank: factor}: those processes (rank 0: the caller) that many times slower in
        every compute, a stand-in for unequal machines in benchmarks and tests.
    heal : bool
        Replace a lost worker with a fresh process (and retry the call) instead of
        shutting the pool down.

    Raises
    ------
    ValueError
        Bad arguments, naming them.
    WorkerError
        Workers that do not start within ``start_timeout``.

    Examples
    --------
    >>> import torch, haloconv
    >>> x, w = torch.randn(1, 16, 48, 48), torch.randn(16, 16, 3, 3)
    >>> with haloconv.LocalCluster(workers=2) as cluster:
    ...     y = haloconv.conv(x, w, padding=1, partition="rows", engine=cluster)
    >>> torch.equal(y, torch.nn.functional.conv2d(x, w, padding=1))
    True
    """

    def run(self, plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
            progress: Progress | None = None) -> Execution:
        """End to end: the master scatters, workers exchange halos and compute, the master
        gathers (``progress(done, total)`` as their outputs arrive)."""
        return static.run(self, plan, x, weight, bias, progress=progress)

    def backward(self, plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 grad: torch.Tensor, needs: tuple[bool, bool, bool]) -> tuple:
        """Gradients (x, weight, bias) of ``plan``'s conv from ``grad`` (ops/static.backward)."""
        return static.backward(self, plan, x, weight, bias, grad, needs)

    def pull(self, todo: list[int], feed, local) -> dict[int, int]:
        """Hand out tiles to whichever process is free (ops/dynamic.pull)."""
        return dynamic.pull(self, todo, feed, local)

    def run_dynamic(self, plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                    throttle: dict[int, float] | None = None, out: torch.Tensor | None = None,
                    finished: set[int] | None = None, progress: Progress | None = None) -> Execution:
        """Master/worker with dynamic scheduling, for unequal workers (ops/dynamic.run_dynamic)."""
        return dynamic.run_dynamic(self, plan, x, weight, bias, throttle=throttle, out=out, finished=finished,
                                   progress=progress)

    def speeds(self, spec: ConvSpec, dtype: torch.dtype = torch.float32, backend: str = "torch",
               repeat: int = 3) -> list[float]:
        """Relative compute speed of every process, 1.0 = the fastest (ops/probes.speeds)."""
        return probes.speeds(self, spec, dtype, backend, repeat)

    def throughput(self, spec: ConvSpec, busy: int, repeat: int, dtype: torch.dtype = torch.float32,
                   backend: str = "torch") -> float:
        """Seconds ``busy`` processes take to compute ``spec`` at once (ops/probes.throughput)."""
        return probes.throughput(self, spec, busy, repeat, dtype, backend)

    def scatter(self, x: torch.Tensor, plan: Plan) -> Sharded:
        """Send every worker its owned box of ``x``; the shards stay in the workers."""
        return resident.scatter(self, x, plan)

    def conv(self, x: Sharded, weight: torch.Tensor, bias: torch.Tensor | None = None, *, plan: Plan) -> Sharded:
        """One layer on resident shards: halo exchange and compute only; the output stays too
        (ops/resident.conv; ``plan`` must own exactly the boxes ``x`` holds)."""
        return resident.conv(self, x, weight, bias, plan=plan)

    def gather(self, x: Sharded) -> torch.Tensor:
        """The full tensor the shards make up, on the master."""
        return resident.gather(self, x)

    def free(self, *shards: Sharded) -> None:
        resident.free(self, *shards)




POOL_DEFAULTS = RunOptions("processes")


def run(plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
        how: RunOptions = POOL_DEFAULTS, throttle: dict[int, float] | None = None) -> Execution:
    """engine='processes': start a LocalCluster for this one call, then stop it; ``how``:
    the run's options (options.RunOptions).

    ``schedule='static'``: each worker computes its tile of ``plan``; with
    ``measure_speeds`` the processes first time the same small problem
    (LocalCluster.speeds) and the plan is split in proportion to their speeds.
    ``schedule='dynamic'``: the job is cut into ``tiles`` (default 4 per worker) tiles of
    the plan's kind of partition, pulled by whichever process is free.
    ``on_failure='retry'``: when a worker dies or hangs mid-run, the job goes on with the
    workers left (one fewer per lost worker) on a fresh cluster — dynamic: only the tiles
    not finished yet (the others are kept); static: the plan re-made with the same
    partition, run again.  Exact either way.  ``'fail'``: raise WorkerError at once.
    ``throttle``: see LocalCluster (benchmarks and tests).  ``progress(done, total)``: called
    as tiles finish (progress.py); a lost worker's retry starts the count again.  What the run
    decides and survives is logged (logger ``haloconv.engines.processes.local``)."""
    on_failure, tiles, progress, measure_speeds = how.on_failure, how.tiles, how.progress, how.measure_speeds
    if how.schedule == "dynamic":
        if plan.splits[1] != 1:
            raise ValueError("schedule='dynamic' hands out tiles of the whole filter bank; use a partition "
                             "without a channels split")
        fine = make_plan(plan.spec, replanned(plan.partition), tiles or 4 * plan.workers, backend=plan.backend)
        out = torch.empty(plan.spec.output_shape, dtype=x.dtype)
        finished: set[int] = set()

        def body(cluster: LocalCluster) -> Execution:
            _started(cluster)
            return cluster.run_dynamic(fine, x, weight, bias, out=out, finished=finished, progress=progress)

        def go_on(survivors: int, error: WorkerError) -> str:
            return (f"going on with {survivors} process(es): {len(fine.tiles) - len(finished)} of "
                    f"{len(fine.tiles)} tiles left, the finished ones kept")
    else:
        current = [plan]

        def body(cluster: LocalCluster) -> Execution:
            _started(cluster)
            p = current[0]
            if measure_speeds:
                speeds = cluster.speeds(p.spec, x.dtype, p.backend)
                log.info("measured speeds (1 = fastest): " + ", ".join(f"{v:.2f}" for v in speeds))
                p = _replan(p, p.workers, speeds)
            return cluster.run(p, x, weight, bias, progress=progress)

        go_on = _replanning(current)
    ex, failures = on_fresh_clusters(plan.workers, on_failure, body, go_on, timeout=how.timeout, throttle=throttle)
    ex.failures = failures
    return ex


def run_backward(plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 grad: torch.Tensor, needs: tuple[bool, bool, bool], *, timeout: float = 60.0,
                 on_failure: str = "retry") -> tuple:
    """The gradients of engine='processes' run of ``plan`` (LocalCluster.backward), on a
    LocalCluster started for this call; a lost worker is handled as in run (static)."""
    current = [plan]
    grads, _ = on_fresh_clusters(plan.workers, on_failure,
                                 lambda cluster: cluster.backward(current[0], x, weight, bias, grad, needs),
                                 _replanning(current), timeout=timeout)
    return grads


def _started(cluster: LocalCluster) -> None:
    log.info(f"started {cluster.workers} worker processes in {cluster.startup_seconds:.2f}s")


def _replanning(current: list[Plan]):
    """go_on for on_fresh_clusters: the whole job re-planned on the survivors."""
    def go_on(survivors: int, error: WorkerError) -> str:
        current[0] = _replan(current[0], survivors)
        return f"re-planning the whole job on {survivors} worker(s) and running it again"
    return go_on


def on_fresh_clusters(workers: int, on_failure: str, body, go_on, *, timeout: float = 60.0,
                      throttle: dict[int, float] | None = None) -> tuple[object, list[str]]:
    """The one failure loop of the runs that start their own processes (one-shot runs and
    streams): ``(body(cluster), failures survived)`` with ``body`` run on a LocalCluster of
    ``workers`` processes started for it.  When a worker is lost (died or hung; see
    ``retriable``) and on_failure='retry', ``go_on(survivors, error)`` adapts the job to the
    processes left and says how (logged as a warning), and ``body`` runs again on a fresh cluster of the
    survivors; otherwise the WorkerError is raised.  (A cluster you hold heals itself and
    retries on the same processes instead: Cluster.retrying.)"""
    check_on_failure(on_failure)
    failures: list[str] = []
    while True:
        try:
            with LocalCluster(workers, timeout=timeout, throttle=throttle, heal=False) as cluster:
                return body(cluster), failures
        except WorkerError as e:
            survivors = workers - max(1, len(e.dead))
            if not retriable(e, on_failure) or survivors < 1:
                raise
            failures.append(str(e))
            log.warning(f"{e}\n{go_on(survivors, e)}")
            workers = survivors


def _replan(plan: Plan, workers: int, weights: list[float] | None = None) -> Plan:
    """The same job with the same kind of partition on ``workers`` workers (split in
    proportion to ``weights`` when given)."""
    if weights is None and plan.weights is not None:
        weights = list(plan.weights[:workers])
    return make_plan(plan.spec, replanned(plan.partition), workers, weights, plan.ownership, plan.exchange,
                     plan.pipeline, plan.backend)
