"""Engine 'stream': out-of-core runs, for inputs bigger than memory.

Every process of a LocalCluster reads the windows of the tiles it computes straight from
the input file and writes their output boxes straight into a preallocated output file;
nothing but tile numbers (8 bytes) passes through the master.  Tiles are sized by the
memory budget (planner/streaming.StreamTiler, handed down) and handed out to whichever
process is free (the master computes too).  Each finished tile is journaled once its output is durable, so a run that
loses a worker goes on with the others, and an interrupted run resumes (``resume=True``),
without computing a finished tile again.  The output appears under its name only whole.
The job, its journal and output, and a tile's read and compute: engines/stream/job.py.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from haloconv.compute import kernels
from haloconv.engines.errors import WorkerError
from haloconv.engines.host import peak_rss
from haloconv.engines.processes.local import LocalCluster, on_fresh_clusters
from haloconv.engines.processes.worker import worker_op
from haloconv.engines.spmd.comm import Comm
from haloconv.engines.stream.job import (
    Job,
    StreamResult,
    claim_output,
    complete_result,
    compute_box,
    data_allowance,
    describe,
    finish,
    header,
    job_for,
    open_output,
    read_window,
    resident,
    torch_backend_for,
)
from haloconv.files import arrays, guard
from haloconv.files.arrays import DiskArray
from haloconv.files.journal import Journal, journal_path, rank_journals
from haloconv.options import StreamOptions
from haloconv.progress import Counter, Progress

log = logging.getLogger(__name__)


def run_tile(job: Job, index: int, torch_backend) -> int:
    """Read tile ``index``'s window from the input file, compute it, write its output box;
    returns the bytes read."""
    window, nread = read_window(job, index)
    y = compute_box(job, index, window, torch_backend, torch.get_num_threads())
    del window
    job.sink.write(job.plan.tiles[index].out, y)
    return nread


@worker_op("stream")
def _serve(comm: Comm, cmd: dict, shards: dict) -> dict:
    """The worker half of a streamed run (the master half: ``run`` below)."""
    name = cmd["torch_backend"]
    return worker_loop(comm, cmd["job"], None if name is None else kernels.backend_of(name))


def worker_loop(comm: Comm, job: Job, torch_backend) -> dict:
    """A worker's side: tile numbers in, 'done' back once the output is durable; -1 stops."""
    tiles = nread = 0
    try:
        while True:
            code = torch.empty(1, dtype=torch.int64)
            comm.irecv(code, 0, "control").wait()
            index = int(code.item())
            if index < 0:
                break
            t0 = time.perf_counter()
            with comm.phase("compute"):
                nread += run_tile(job, index, torch_backend)
                job.sink.flush()
            comm.pace(t0)
            comm.wait([comm.isend(code, 0, "control")])  # done: the master journals it
            tiles += 1
    finally:
        arrays.close_all()
    return {"tiles": tiles, "bytes_read": nread}


def run_on(cluster, job: Job, todo: list[int], journal: Journal, progress: Progress | None = None) -> dict:
    """The master's side on a started cluster: hand out ``todo``, journal what finishes
    (and count it to ``progress``).  Returns the reports per rank (tiles, bytes read, peak RSS)."""
    torch_backend = torch_backend_for(job)
    stats = {"bytes_read": 0}
    count = Counter(progress, len(job.plan.tiles), len(journal.done))

    def finished(index: int) -> None:
        journal.record(index)
        count.tick()

    def master(comm: Comm) -> None:
        def feed(rank: int, index: int, keep: list) -> None:
            code = torch.tensor([index], dtype=torch.int64)
            comm.wait([comm.isend(code, rank, "control")])
            if index < 0:
                return
            ack = torch.empty(1, dtype=torch.int64)
            comm.irecv(ack, rank, "control").wait()
            if int(ack.item()) != index:
                raise WorkerError(f"worker {rank} answered tile {int(ack.item())} for tile {index}")
            finished(index)

        def local(index: int) -> None:
            t0 = time.perf_counter()  # on a worker's threads, as the whole step (Cluster.step)
            stats["bytes_read"] += run_tile(job, index, torch_backend)
            job.sink.flush()
            comm.pace(t0)
            finished(index)

        try:
            return cluster.pull(list(todo), feed, local)
        finally:
            arrays.close_all()

    cmd = {"op": "stream", "module": __name__, "job": job,
           "torch_backend": None if torch_backend is None else kernels.backend_name(torch_backend)}
    done, reports = cluster.step(cmd, master)
    reports[0].update(tiles=done.get(0, 0), bytes_read=stats["bytes_read"], peak_rss=peak_rss())
    return reports


def run(source: DiskArray, tiler, weight, bias, out: Path, fmt: str, how: StreamOptions) -> StreamResult:
    """Stream ``tiler.spec`` over the input file ``source`` into ``out`` (format ``fmt``)
    with ``how.workers`` processes, each within ``how.memory_budget`` bytes of resident
    memory: once they have started, the tiles are cut by ``tiler`` (planner/streaming.
    StreamTiler: its block when given, else the largest tiles the budget allows)."""
    workers, memory_budget, progress = how.workers, how.memory_budget, how.progress
    t_start = time.perf_counter()
    result: StreamResult | None = None
    job: Job | None = None
    journal: Journal | None = None
    try:
        def body(cluster: LocalCluster) -> None:
            nonlocal job, journal, result
            if job is None:  # the first start: size the tiles by what the processes hold now
                baseline = max(resident(os.getpid()), *(resident(p) for p in cluster.pids()))
                job = job_for(source, tiler, weight, bias, how.dtype, data_allowance(memory_budget, baseline),
                              4 * workers, out if how.resume else None)
                job, journal = open_output(job, out, fmt, how.resume, how.sync)
                result = StreamResult(job.plan, out, 0.0, memory_budget, baseline, skipped=len(journal.done))
                log.info(describe(job, journal, f"{workers} processes", memory_budget, baseline))
            todo = [i for i in range(len(job.plan.tiles)) if i not in journal.done]
            reports = run_on(cluster, job, todo, journal, progress)
            for r, rep in reports.items():
                result.tiles_done[r] = result.tiles_done.get(r, 0) + rep.get("tiles", 0)
                result.bytes_read[r] = result.bytes_read.get(r, 0) + rep.get("bytes_read", 0)
                result.peak_rss[r] = max(result.peak_rss.get(r, 0), rep["peak_rss"])

        def go_on(survivors: int, error: WorkerError) -> str:
            if job is None:  # lost while the stream was being set up: nothing to go on with
                raise error
            result.kept.append(len(journal.done))
            return (f"going on with {survivors} process(es): "
                    f"{len(job.plan.tiles) - len(journal.done)} tiles left, finished ones kept")

        _, failures = on_fresh_clusters(workers, how.on_failure, body, go_on, timeout=how.timeout,
                                        throttle=how.throttle)
        result.failures.extend(failures)
        finish(journal, out, how.sync)
    finally:
        if journal is not None:
            journal.close()
    result.wall_seconds = time.perf_counter() - t_start
    return result


def run_spmd(source: DiskArray, tiler, weight, bias, out: Path, fmt: str, how: StreamOptions,
             group=None) -> StreamResult | None:
    """Under torchrun (torch.distributed initialised): every rank streams its share of the
    tiles through files all ranks see (a shared file system).  Rank 0 makes the output and
    the journal; rank r journals its tiles in OUT.journal.r<r> (folded into the main one
    by a resumed run); the output is renamed into place once every rank is done.  Tiles
    are dealt round robin (ranks are alike; a rank that dies stops the run after the
    process group's timeout, and ``resume`` goes on from the journals).  Rank 0 decides
    what becomes of an existing output (stream_job.prepare_output) before anything is
    created.  Returns the result on rank 0, None elsewhere; ``progress``: rank 0's own tiles."""
    import torch.distributed as dist

    memory_budget, resume, sync, dtype = how.memory_budget, how.resume, how.sync, how.dtype
    spec, backend, progress = tiler.spec, tiler.backend, how.progress
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    t_start = time.perf_counter()
    peak = torch.tensor([resident(os.getpid())], dtype=torch.int64)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    baseline = int(peak.item())
    job = job_for(source, tiler, weight, bias, dtype, data_allowance(memory_budget, baseline), 4 * world,
                  out if resume else None)
    shared: list = [None]
    journal = None
    if rank == 0:  # errors travel to every rank, so all of them raise alike
        try:
            if claim_output(out, source, spec, weight, bias, backend, dtype, fmt, resume=resume,
                            overwrite=how.overwrite):
                shared = ["complete"]
            else:
                job, journal = open_output(job, out, fmt, resume, sync)
                shared = [(job.sink, sorted(journal.done), journal.resumed)]
                log.info(describe(job, journal, f"{world} ranks", memory_budget, baseline))
        except (ValueError, OSError) as e:
            shared = [f"{type(e).__name__}: {e}"]
    dist.broadcast_object_list(shared, src=0, group=group)
    if shared[0] == "complete":
        return complete_result(source, tiler, weight, bias, dtype, memory_budget, out) if rank == 0 else None
    if isinstance(shared[0], str):
        raise ValueError(shared[0])
    sink, done, _ = shared[0]
    job = Job(job.plan, job.source, sink, job.weight, job.bias, job.dtype)
    if rank != 0:
        main = journal_path(out)
        journal = Journal(main.with_name(f"{main.name}.r{rank}"), header(job, out, fmt), resume=False, sync=sync)
    torch_backend = torch_backend_for(job)
    finished = set(done)
    todo = [i for i in range(len(job.plan.tiles)) if i not in finished]
    nread = tiles = 0
    count = Counter(progress if rank == 0 else None, len(todo[::world]))
    try:
        for index in todo[rank::world]:
            nread += run_tile(job, index, torch_backend)
            job.sink.flush()
            journal.record(index)
            tiles += 1
            count.tick()
    finally:
        arrays.close_all()
        journal.close()
    stats = [None] * world
    dist.all_gather_object(stats, (tiles, nread, peak_rss()), group=group)  # also: every rank is done
    if rank != 0:
        return None
    finish(journal, out, sync)
    for part in rank_journals(out):
        guard.remove_own(part)
    result = StreamResult(job.plan, out, time.perf_counter() - t_start, memory_budget, baseline, skipped=len(done))
    for r, (t, b, p) in enumerate(stats):
        result.tiles_done[r], result.bytes_read[r], result.peak_rss[r] = t, b, p
    return result
