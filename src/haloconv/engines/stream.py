"""Engine 'stream': out-of-core runs, for inputs bigger than memory.

Every process of a LocalCluster reads the windows of the tiles it computes straight from
the input file and writes their output boxes straight into a preallocated output file;
nothing but tile numbers (8 bytes) passes through the master.  Tiles are sized by the
memory budget (cost.stream_plan) and handed out to whichever process is free (the master
computes too).  Each finished tile is journaled once its output is durable, so a run that
loses a worker goes on with the others, and an interrupted run resumes (``resume=True``),
without computing a finished tile again.  The output appears under its name only whole.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from haloconv.compute import kernels
from haloconv.compute import tile as one_tile
from haloconv.engines.base import fill_window
from haloconv.engines.cluster import check_on_failure
from haloconv.engines.comm import Comm
from haloconv.engines.host import peak_rss, proc_mb
from haloconv.engines.processes import LocalCluster, on_fresh_clusters
from haloconv.engines.worker import WorkerError, worker_op
from haloconv.files import arrays
from haloconv.files.arrays import DiskArray
from haloconv.files.journal import Journal, journal_path
from haloconv.model import cost
from haloconv.planning.plan import Plan
from haloconv.planning.spec import ConvSpec

# what a process holds beyond its tiles' data: heap slack, thread stacks, gloo buffers.
# The slack varies with timing: a 400 MiB budget on 2 processes peaked at 300-380 MiB on a
# quiet machine and once at 401 MiB (48 MiB margin) on a loaded one
MARGIN_BYTES = 64 << 20


@dataclass(frozen=True)
class Job:
    """What every process needs to compute any tile (pickled into the command)."""

    plan: Plan
    source: DiskArray
    sink: DiskArray
    weight: torch.Tensor
    bias: torch.Tensor | None
    dtype: torch.dtype


@dataclass
class StreamResult:
    plan: Plan
    output: Path
    wall_seconds: float
    budget: int
    baseline: int  # resident bytes of a process before any data (the most of them)
    tiles_done: dict[int, int] = field(default_factory=dict)  # rank -> tiles it computed
    peak_rss: dict[int, int] = field(default_factory=dict)  # rank -> peak resident bytes
    bytes_read: dict[int, int] = field(default_factory=dict)
    skipped: int = 0  # tiles a resumed run found finished
    failures: list[str] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # per failure: finished tiles the run went on from

    def table(self) -> str:
        lines = [f"{'rank':>4} {'tiles':>6} {'read MB':>9} {'peak RSS MB':>12}"]
        for r in sorted(self.peak_rss):
            lines.append(f"{r:>4} {self.tiles_done.get(r, 0):>6} {self.bytes_read.get(r, 0) / 1e6:>9.1f} "
                         f"{self.peak_rss[r] / 2**20:>12.1f}")
        peak = max(self.peak_rss.values(), default=0)
        lines.append(f"memory budget {self.budget / 2**20:.0f} MiB per process; peak {peak / 2**20:.0f} MiB; "
                     f"{self.baseline / 2**20:.0f} MiB of it before any data (Python, torch, gloo)")
        return "\n".join(lines)


def run_tile(job: Job, index: int, torch_backend) -> int:
    """Read tile ``index``'s window from the input file, compute it, write its output box;
    returns the bytes read."""
    window, nread = read_window(job, index)
    y = compute_box(job, index, window, torch_backend)
    del window
    job.sink.write(job.plan.tiles[index].out, y)
    return nread


def read_window(job: Job, index: int) -> tuple[torch.Tensor, int]:
    """Tile ``index``'s window, read from the input file; and the bytes read."""
    tile = job.plan.tiles[index]
    np_dtype = torch.empty(0, dtype=job.dtype).numpy().dtype
    nread = 0

    def read(box):
        nonlocal nread
        block = job.source.read(box, np_dtype)
        nread += block.nbytes
        return torch.from_numpy(block)

    return fill_window(tile, read, torch.zeros(tile.window.shape, dtype=job.dtype)), nread


def compute_box(job: Job, index: int, window: torch.Tensor, torch_backend) -> np.ndarray:
    """Tile ``index``'s output box from its window (the caller drops the window after)."""
    tile = job.plan.tiles[index]
    c0, c1 = job.plan.weight_box(tile)  # a block of output channels uses its filters
    bias = None if job.bias is None else job.bias[c0:c1]
    return one_tile.compute_tile(job.plan, tile, window, job.weight[c0:c1], bias, torch_backend).numpy()


@worker_op("stream")
def _serve(comm: Comm, cmd: dict, shards: dict) -> dict:
    """The worker half of a streamed run (the master half: ``run`` below)."""
    return worker_loop(comm, cmd["job"], kernels.backend_of(cmd["torch_backend"]))


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


def run_on(cluster, job: Job, todo: list[int], journal: Journal, log=None) -> dict:
    """The master's side on a started cluster: hand out ``todo``, journal what finishes.
    Returns the reports per rank (tiles, bytes read, peak RSS)."""
    torch_backend = kernels.select_backend(job.plan.spec, torch.empty(0, dtype=job.dtype), job.weight, job.bias)
    start = time.perf_counter()
    step = max(1, len(todo) // 10)
    stats = {"bytes_read": 0}

    def finished(index: int) -> None:
        journal.record(index)
        n = len(journal.done)
        if log is not None and (n % step == 0 or n == len(job.plan.tiles)):
            log(f"  {n}/{len(job.plan.tiles)} tiles done ({time.perf_counter() - start:.1f}s)")

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

    cmd = {"op": "stream", "module": __name__, "job": job, "torch_backend": kernels.backend_name(torch_backend)}
    done, reports = cluster.step(cmd, master)
    reports[0].update(tiles=done.get(0, 0), bytes_read=stats["bytes_read"], peak_rss=peak_rss())
    return reports


def _header(job: Job, out: Path, fmt: str) -> dict:
    """What makes a journal this job's: resuming with another input, kernel or tiling is refused."""
    st = os.stat(job.source.path)
    digest = hashlib.sha256(job.weight.numpy().tobytes())
    if job.bias is not None:
        digest.update(job.bias.numpy().tobytes())
    plan = job.plan
    return {
        "input": os.path.abspath(job.source.path), "input_bytes": st.st_size, "input_mtime_ns": st.st_mtime_ns,
        "spec": str(asdict(plan.spec)), "weights_sha256": digest.hexdigest(), "backend": plan.backend,
        "dtype": str(job.dtype), "tiles": len(plan.tiles), "block": [t.out.shape for t in plan.tiles[:1]][0],
        "output": os.path.abspath(out), "format": fmt,
    }


def resident(pid: int) -> int:
    return int(proc_mb(pid) * 2**20)


def data_allowance(memory_budget: int, baseline: int) -> int:
    allowance = memory_budget - baseline - MARGIN_BYTES
    if allowance <= 0:
        raise ValueError(f"memory_budget={memory_budget / 2**20:.0f} MiB is below what a process holds before any "
                         f"data ({baseline / 2**20:.0f} MiB: Python, torch, gloo) plus {MARGIN_BYTES >> 20} MiB "
                         "of slack; raise it")
    return allowance


def job_for(source: DiskArray, spec: ConvSpec, weight, bias, dtype, allowance: int, backend: str, min_tiles: int,
            block) -> Job:
    """The Job without its output: the plan's tiles sized by the allowance (what one tile
    may hold at its peak), at least ``min_tiles`` of them; the filters in ``dtype``."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    plan = cost.stream_plan(spec, allowance, backend, itemsize, np.dtype(source.dtype).itemsize,
                            min_tiles=min_tiles, block=block)
    return Job(plan, source, None, weight.to(dtype), None if bias is None else bias.to(dtype), dtype)


def open_output(job: Job, out: Path, fmt: str, resume: bool) -> tuple[Job, Journal]:
    """Create the .partial output and a fresh journal, or (``resume``, both there) open
    them and read which tiles are finished.  Journals of SPMD ranks (OUT.journal.rN) are
    folded into the main one."""
    header = _header(job, out, fmt)
    partial, main = arrays.partial_path(out), journal_path(out)
    np_dtype = torch.empty(0, dtype=job.dtype).numpy().dtype
    parts = sorted(main.parent.glob(main.name + ".r*"))
    if resume and partial.exists() and main.exists():
        journal = Journal(main, header, resume=True)
        for part in parts:
            other = Journal(part, header, resume=True)
            other.close()
            for index in sorted(other.done - journal.done):
                journal.record(index)
        sink = arrays.open_output(partial, fmt, job.plan.spec.output_shape, np_dtype)
    else:
        block = job.plan.tiles[0].out.shape  # the zarr chunks: no two tiles share one
        sink = arrays.create_output(partial, fmt, job.plan.spec.output_shape, np_dtype, block)
        journal = Journal(main, header, resume=False)
    for part in parts:
        part.unlink()
    return Job(job.plan, job.source, sink, job.weight, job.bias, job.dtype), journal


def describe(job: Job, journal: Journal, who: str, budget: int, baseline: int) -> str:
    """The line a streamed run starts with; ``who`` computes it (e.g. '2 processes')."""
    block = job.plan.tiles[0].out.shape
    return (f"streaming: {len(job.plan.tiles)} tiles of {'x'.join(map(str, block))} outputs, {who}, "
            f"budget {budget / 2**20:.0f} MiB per process ({baseline / 2**20:.0f} MiB held before any data)"
            + (f"; resuming: {len(journal.done)} tiles already done" if journal.resumed else ""))


def run(source: DiskArray, spec: ConvSpec, weight: torch.Tensor, bias: torch.Tensor | None, out: Path,
        fmt: str, *, memory_budget: int, workers: int, backend: str = "torch", dtype: torch.dtype = torch.float32,
        resume: bool = False, on_failure: str = "retry", timeout: float = 60.0,
        throttle: dict[int, float] | None = None, block: tuple[int | None, ...] | None = None,
        log=None) -> StreamResult:
    """Stream ``spec`` over the input file ``source`` into ``out`` (format ``fmt``) with
    ``workers`` processes, each within ``memory_budget`` bytes of resident memory.

    ``block``: the output tile per dim over (N, C_out, *spatial) (None: whole), instead of
    the largest tiles the budget allows (e.g. to match the chunks of another file)."""
    check_on_failure(on_failure)
    t_start = time.perf_counter()
    result: StreamResult | None = None
    job: Job | None = None
    journal: Journal | None = None
    try:
        def body(cluster: LocalCluster) -> None:
            nonlocal job, journal, result
            if job is None:  # the first start: size the tiles by what the processes hold now
                baseline = max(resident(os.getpid()), *(resident(p) for p in cluster.pids()))
                job = job_for(source, spec, weight, bias, dtype, data_allowance(memory_budget, baseline), backend,
                              4 * workers, block)
                job, journal = open_output(job, out, fmt, resume)
                result = StreamResult(job.plan, out, 0.0, memory_budget, baseline, skipped=len(journal.done))
                if log is not None:
                    log(describe(job, journal, f"{workers} processes", memory_budget, baseline))
            todo = [i for i in range(len(job.plan.tiles)) if i not in journal.done]
            reports = run_on(cluster, job, todo, journal, log)
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

        _, failures = on_fresh_clusters(workers, on_failure, body, go_on, timeout=timeout, throttle=throttle,
                                        log=log)
        result.failures.extend(failures)
        journal.close()
        arrays.promote(arrays.partial_path(out), out)
        journal.remove()
    finally:
        if journal is not None:
            journal.close()
    result.wall_seconds = time.perf_counter() - t_start
    return result


def run_spmd(source: DiskArray, spec: ConvSpec, weight: torch.Tensor, bias: torch.Tensor | None, out: Path,
             fmt: str, *, memory_budget: int, backend: str = "torch", dtype: torch.dtype = torch.float32,
             resume: bool = False, block: tuple[int | None, ...] | None = None, group=None,
             log=None) -> StreamResult | None:
    """Under torchrun (torch.distributed initialised): every rank streams its share of the
    tiles through files all ranks see (a shared file system).  Rank 0 makes the output and
    the journal; rank r journals its tiles in OUT.journal.r<r> (folded into the main one
    by a resumed run); the output is renamed into place once every rank is done.  Tiles
    are dealt round robin (ranks are alike; a rank that dies stops the run after the
    process group's timeout, and ``resume`` goes on from the journals).  Returns the
    result on rank 0, None elsewhere."""
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    t_start = time.perf_counter()
    peak = torch.tensor([resident(os.getpid())], dtype=torch.int64)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    baseline = int(peak.item())
    job = job_for(source, spec, weight, bias, dtype, data_allowance(memory_budget, baseline), backend, 4 * world,
                  block)
    shared: list = [None]
    journal = None
    if rank == 0:  # errors travel to every rank, so all of them raise alike
        try:
            job, journal = open_output(job, out, fmt, resume)
            shared = [(job.sink, sorted(journal.done), journal.resumed)]
            if log is not None:
                log(describe(job, journal, f"{world} ranks", memory_budget, baseline))
        except (ValueError, OSError) as e:
            shared = [f"{type(e).__name__}: {e}"]
    dist.broadcast_object_list(shared, src=0, group=group)
    if isinstance(shared[0], str):
        raise ValueError(shared[0])
    sink, done, _ = shared[0]
    job = Job(job.plan, job.source, sink, job.weight, job.bias, job.dtype)
    if rank != 0:
        main = journal_path(out)
        journal = Journal(main.with_name(f"{main.name}.r{rank}"), _header(job, out, fmt), resume=False)
    torch_backend = kernels.select_backend(spec, torch.empty(0, dtype=dtype), job.weight, job.bias)
    finished = set(done)
    todo = [i for i in range(len(job.plan.tiles)) if i not in finished]
    nread = tiles = 0
    try:
        for index in todo[rank::world]:
            nread += run_tile(job, index, torch_backend)
            job.sink.flush()
            journal.record(index)
            tiles += 1
            if log is not None and rank == 0 and tiles % max(1, len(todo) // world // 10) == 0:
                log(f"  rank 0: {tiles}/{len(todo[::world])} of its tiles done ({time.perf_counter() - t_start:.1f}s)")
    finally:
        arrays.close_all()
        journal.close()
    stats = [None] * world
    dist.all_gather_object(stats, (tiles, nread, peak_rss()), group=group)  # also: every rank is done
    if rank != 0:
        return None
    arrays.promote(arrays.partial_path(out), out)
    journal.remove()
    for part in journal_path(out).parent.glob(journal_path(out).name + ".r*"):
        part.unlink()
    result = StreamResult(job.plan, out, time.perf_counter() - t_start, memory_budget, baseline, skipped=len(done))
    for r, (t, b, p) in enumerate(stats):
        result.tiles_done[r], result.bytes_read[r], result.peak_rss[r] = t, b, p
    return result
