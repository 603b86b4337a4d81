"""A streamed (out-of-core) run in this process: read, compute and write of successive
tiles overlapped on threads, no worker processes.

The pipeline holds three tiles at once, as libvips does with its regions: a reader thread
reads tile k+1's window from the input file while this thread computes tile k with every
core (torch, OpenCV and numpy release the GIL in their loops; the file reads and writes
are pread/pwrite, which do too), and a writer thread writes tile k-1's output box, makes
it durable and journals it.  So tiles are sized to half the process's data allowance
(cost.tile_peak_bytes counts one tile's window, read buffers, workspace and output twice;
the three stages together hold less than two such peaks).  A Zarr input is read a chunk at a
time through a cache of two rows of chunks (files/chunks.py), whose bytes come out of the
process's allowance first: a band's halo rows and the next band's rows are decoded once.

Everything a streamed run guarantees holds here as on the processes engine
(engines/stream/workers.py; both take their Job, journal and output handling from
engines/stream/job.py): a tile is journaled only once its output is durable, an
interrupted run resumes without computing a finished tile again, the output appears
under its name only whole, and the process's peak resident memory stays within the
budget.  What this path does not have is the processes engine's survival of a lost
worker: a failure here stops the run (the journal keeps what finished; ``resume`` goes on
from it).
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from haloconv.engines.host import empty, peak_rss
from haloconv.engines.stream import job as stream
from haloconv.files import arrays, chunks
from haloconv.files.arrays import DiskArray
from haloconv.options import StreamOptions, float_dtype
from haloconv.progress import Counter

log = logging.getLogger(__name__)

# tiles in flight: one being read, one computed, one written; sized so that the three
# stages together stay within the allowance of two tile peaks (see the module docstring)
IN_FLIGHT_PEAKS = 2
# tiles at least, so that reading the first and writing the last (not overlapped with any
# compute) are a small part of the run
MIN_TILES = 8


def run(source: DiskArray, tiler, weight, bias, out: Path, fmt: str, how: StreamOptions) -> stream.StreamResult:
    """Stream ``tiler.spec`` over the input file ``source`` into ``out`` (format ``fmt``) in
    this process, its peak resident memory within ``how.memory_budget`` bytes, the tiles cut
    by ``tiler`` (planner/streaming.StreamTiler); ``how.workers``: the cores the compute uses
    (OpenCV's, or torch's, thread count for the run).  ``weight``, ``bias``: tensors or
    arrays.  ``how.progress(done, total)``: called as each tile is written (progress.py).
    ``how.sync``: every tile on disk before it is journaled (stream_job.open_output)."""
    spec, backend, memory_budget, threads, sync = tiler.spec, tiler.backend, how.memory_budget, how.workers, how.sync
    t_start = time.perf_counter()
    stream.load_libraries(backend, spec)  # counted in the baseline, not in the tiles' share
    baseline = stream.resident(os.getpid())
    reader = _chunk_reader(source, how.dtype, memory_budget - baseline)
    allowance = stream.data_allowance(memory_budget, baseline + reader.cached_bytes()) // IN_FLIGHT_PEAKS
    job = stream.job_for(source, tiler, weight, bias, how.dtype, allowance, MIN_TILES, out if how.resume else None)
    job, journal = stream.open_output(job, out, fmt, how.resume, sync)
    result = stream.StreamResult(job.plan, out, 0.0, memory_budget, baseline, skipped=len(journal.done))
    log.info(stream.describe(job, journal, f"1 process (read, compute and write overlapped; {threads} compute "
                                           "threads)", memory_budget, baseline))
    todo = [i for i in range(len(job.plan.tiles)) if i not in journal.done]
    torch_backend = stream.torch_backend_for(job)  # None: the backend computes arrays, no torch
    try:
        with _torch_threads(threads, torch_backend is not None):
            nread = _pipeline(job, todo, journal, torch_backend, threads,
                              Counter(how.progress, len(job.plan.tiles), len(journal.done)).tick, reader)
        stream.finish(journal, out, sync)
    finally:
        journal.close()
        arrays.close_all()
        chunks.forget_chunks()
    result.tiles_done[0], result.bytes_read[0], result.peak_rss[0] = len(todo), nread, peak_rss()
    result.wall_seconds = time.perf_counter() - t_start
    return result


@contextmanager
def _torch_threads(threads: int, uses_torch: bool):
    """torch's thread count set to ``threads`` for the run, when its tiles compute with torch."""
    if not uses_torch:
        yield
        return
    import torch

    caller = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(caller)


def _chunk_reader(source: DiskArray, dtype, room: int) -> chunks.Reader:
    """How the windows' pieces are read: a Zarr input a chunk at a time through a cache of
    two rows of chunks along the first spatial axis (a row band's halo rows and the next
    band's first rows are then decoded once), where that takes at most a quarter of the
    process's room for data (``room``); else box by box (files/chunks.py)."""
    dtype = float_dtype(dtype)
    found = chunks.chunks_of(source)
    if found is None:
        return chunks.Reader(source, dtype)
    shape = source.logical_shape
    per_row = math.prod(-(-n // c) for d, (n, c) in enumerate(zip(shape, found)) if d != 2)
    reader = chunks.Reader(source, dtype, found, kept=2 * per_row)
    if reader.cached_bytes() > room // 4:
        return chunks.Reader(source, dtype)
    chunks.forget_chunks()  # chunks of a file this process read before may have been rewritten since
    return reader


def _pipeline(job: stream.Job, todo: list[int], journal, torch_backend, threads: int, progress,
              reader: chunks.Reader) -> int:
    """Read ahead, compute here, write behind; returns the bytes read.  An error in any
    stage stops the run once the stages in flight have ended (no thread outlives it; a
    tile being written is finished and journaled)."""
    nread = 0
    windows, outputs = _Buffers(np.uint8), _Buffers(job.dtype)  # windows: the byte buffers they are read into
    tiles = job.plan.tiles
    pooled = torch_backend is None  # the array path computes into an output buffer used again; torch's makes its own

    def write(index: int, y) -> None:
        job.sink.write(tiles[index].out, y)
        job.sink.flush()  # with sync: on disk before it is journaled
        journal.record(index)
        progress()

    def read(index: int) -> tuple[np.ndarray, Future]:
        raw = windows.take((stream.window_bytes(job, index),))
        return raw, pool.submit(stream.read_window, job, index, raw, reader)

    with ThreadPoolExecutor(1, "haloconv-read") as pool, ThreadPoolExecutor(1, "haloconv-write") as writer:
        raw, ahead = read(todo[0]) if todo else (None, None)
        behind: Future | None = None
        written = None  # the output being written
        try:
            for k, index in enumerate(todo):
                window, n = ahead.result()
                nread += n
                held = raw
                raw, ahead = read(todo[k + 1]) if k + 1 < len(todo) else (None, None)
                y = stream.compute_box(job, index, window, torch_backend, threads,
                                       outputs.take(tiles[index].out.shape) if pooled else None)
                windows.give(held)
                del window, held
                if behind is not None:
                    behind.result()  # one write in flight: its output is the third tile held
                    outputs.give(written if pooled else None)
                behind, written = writer.submit(write, index, y), y
                del y
            if behind is not None:
                behind.result()
        except BaseException:
            if ahead is not None:
                ahead.cancel()  # a read not started yet is not needed; a write in flight finishes
            raise
    return nread


class _Buffers:
    """Arrays used again from tile to tile (the windows being read and computed, the
    outputs being computed and written): a tile's pages are faulted in once per run, not
    once per tile, and never unmapped in between — with the reads straight into the
    window (stream_job.read_window), most of what a streamed filter costs beyond the
    copies in and out of the page cache.  Only the buffers in flight exist: a tile of
    another shape (the last ones) lets the free ones go first.  Used from the pipeline's
    own thread only."""

    def __init__(self, dtype):
        self.dtype, self.free = dtype, []

    def take(self, shape) -> np.ndarray:
        shape = tuple(shape)
        for i, b in enumerate(self.free):
            if b.shape == shape:
                return self.free.pop(i)
        self.free.clear()
        return empty(shape, self.dtype)

    def give(self, buf: np.ndarray | None) -> None:
        if buf is not None:
            self.free.append(buf)
