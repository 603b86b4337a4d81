"""A streamed (out-of-core) run's job, shared by every engine that streams (engines/
stream.py: worker processes and torchrun ranks; engines/stream/threads.py: one process):
the tiles (cut by the planner's StreamTiler to the memory budget), the output and its journal, a tile's window read
from the input file and its output box computed.  No torch unless a tile's backend
computes with it: a filter streamed on OpenCV never imports it."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from haloconv.compute import backends
from haloconv.compute import tile as one_tile
from haloconv.compute.backends.base import as_array
from haloconv.engines.host import empty, proc_mb
from haloconv.engines.windows import piece_data
from haloconv.files import arrays, guard
from haloconv.files.arrays import DiskArray
from haloconv.files.journal import (
    Journal,
    journal_path,
    progress_of,
    rank_journals,
    read_receipt,
    receipt_mismatch,
    receipt_path,
    write_json,
)
from haloconv.options import float_dtype
from haloconv.tiling.plan import Plan
from haloconv.tiling.spec import ConvSpec

# what a process holds beyond its tiles' data: heap slack, thread stacks, gloo buffers.
# The slack varies with timing: a 400 MiB budget on 2 processes peaked at 300-380 MiB on a
# quiet machine and once at 401 MiB (48 MiB margin) on a loaded one
MARGIN_BYTES = 64 << 20


@dataclass(frozen=True)
class Job:
    """What every process needs to compute any tile (pickled into the command): the
    filters as numpy arrays in the run's dtype (a numpy dtype)."""

    plan: Plan
    source: DiskArray
    sink: DiskArray | None
    weight: np.ndarray
    bias: np.ndarray | None
    dtype: np.dtype


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
    complete: bool = False  # the output was found complete (resume, its receipt matching): nothing was done

    def table(self) -> str:
        lines = [f"{'rank':>4} {'tiles':>6} {'read MB':>9} {'peak RSS MB':>12}"]
        for r in sorted(self.peak_rss):
            lines.append(f"{r:>4} {self.tiles_done.get(r, 0):>6} {self.bytes_read.get(r, 0) / 1e6:>9.1f} "
                         f"{self.peak_rss[r] / 2**20:>12.1f}")
        peak = max(self.peak_rss.values(), default=0)
        lines.append(f"memory budget {self.budget / 2**20:.0f} MiB per process; peak {peak / 2**20:.0f} MiB; "
                     f"{self.baseline / 2**20:.0f} MiB of it before any data (Python and its libraries)")
        return "\n".join(lines)


def window_bytes(job: Job, index: int) -> int:
    """The bytes of the buffer tile ``index``'s window is read into (read_window)."""
    return arrays.direct_bytes(job.plan.tiles[index].window.volume * job.dtype.itemsize)


def read_window(job: Job, index: int, raw: np.ndarray | None = None, read=None) -> tuple[np.ndarray, int]:
    """Tile ``index``'s window, read from the input file into ``raw`` (a byte buffer of
    ``window_bytes``, used again from tile to tile: its pages are not faulted in,
    zeroed and unmapped for every tile) or a new one, as a view of it; and the bytes read.
    A window the file holds whole as one run of bytes is read around the page cache
    (DiskArray.read_direct: it lands wherever in the buffer the file's pages put it); else
    a piece the file holds as it lands in the window is read straight into it (no block in
    between, DiskArray.read_into); reversed or broadcast pieces and converted pixels are
    read, then copied — by ``read(box)`` when given (a files/chunks.Reader: a Zarr input a
    chunk at a time through its cache), else DiskArray.read."""
    tile = job.plan.tiles[index]
    if raw is None:
        raw = empty((window_bytes(job, index),), np.uint8)
    itemsize = np.dtype(job.source.dtype).itemsize
    nread = sum(p.elements for p in tile.pieces) * itemsize
    if tile.window_is_view and job.dtype == np.dtype(job.source.dtype):  # the window is a box of the input
        window = job.source.read_direct(tile.window, raw)
        if window is not None:
            return window, nread
    buf = raw[:tile.window.volume * job.dtype.itemsize].view(job.dtype).reshape(tile.window.shape)
    if sum(p.dst.volume for p in tile.pieces) != tile.window.volume:
        buf.fill(tile.fill)  # the padding value where no piece lands (pieces never overlap)
    for piece in tile.pieces:
        dest = buf[piece.dst.slices()]
        if all(s == 1 for s in piece.steps) and job.source.read_into(piece.src, dest):
            continue
        dest[...] = piece_data(job.source.read(piece.src, job.dtype) if read is None else read(piece.src), piece)
    return buf, nread


def load_libraries(backend: str, spec: ConvSpec) -> None:
    """Import what the tiles of ``backend`` will compute with (torch and MKL's mode for the
    tensor path; the backend's own libraries), so that the resident memory a streamed run
    measures before any data includes them: imported after, they would take the tiles'
    share of the budget (torch alone holds some 200 MB)."""
    b = backends.get(backend)
    for name in (*b.libraries, *(() if b.computes_arrays(spec) else ("haloconv.compute.kernels",))):
        importlib.import_module(name)


def torch_backend_for(job: Job):
    """torch's conv backend for the job's tiles (selected once, the way the single-node call
    selects it; compute/kernels.py), or None when the job's backend computes arrays (no
    torch imported)."""
    if backends.get(job.plan.backend).computes_arrays(job.plan.spec):
        return None
    import torch

    from haloconv.compute import kernels

    bias = None if job.bias is None else torch.from_numpy(job.bias)
    return kernels.select_backend(job.plan.spec, torch.empty(0, dtype=_torch_dtype(job.dtype)),
                                  torch.from_numpy(job.weight), bias)


def compute_box(job: Job, index: int, window: np.ndarray, torch_backend, threads: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """Tile ``index``'s output box from its window (the caller drops the window after):
    numpy arrays through the backend's array path when it has one (``torch_backend`` None,
    ``threads`` cores; into ``out`` when given, an array of the box's shape used again from
    tile to tile), else torch's tile compute on tensors sharing the arrays' memory."""
    tile = job.plan.tiles[index]
    c0, c1 = job.plan.weight_box(tile)  # a block of output channels uses its filters
    weight, bias = job.weight[c0:c1], None if job.bias is None else job.bias[c0:c1]
    if torch_backend is None:
        out = empty(tile.out.shape, job.dtype) if out is None else out
        one_tile.compute_tile_array(job.plan, tile, window, weight, bias, out, threads)
        return out
    import torch

    return one_tile.compute_tile(job.plan, tile, torch.from_numpy(window), torch.from_numpy(weight),
                                 None if bias is None else torch.from_numpy(bias), torch_backend).numpy()


def _torch_dtype(dtype: np.dtype):
    import torch

    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]


def identity(source: DiskArray, spec: ConvSpec, weight, bias, backend: str, dtype, fmt: str) -> dict:
    """What makes two streamed runs the same computation (files/journal.IDENTITY): the input
    file (path, size, time stamp), the conv, the filters' bytes in the run's dtype, the
    backend, the output's format."""
    dtype = float_dtype(dtype)
    st = os.stat(source.path)
    digest = hashlib.sha256(np.ascontiguousarray(as_array(weight), dtype).tobytes())
    if bias is not None:
        digest.update(np.ascontiguousarray(as_array(bias), dtype).tobytes())
    return {"input": os.path.abspath(source.path), "input_bytes": st.st_size, "input_mtime_ns": st.st_mtime_ns,
            "spec": str(asdict(spec)), "weights_sha256": digest.hexdigest(), "backend": backend,
            "dtype": str(dtype), "format": fmt}


def header(job: Job, out: Path, fmt: str) -> dict:
    """What makes a journal this job's: resuming with another input, kernel or tiling is refused."""
    plan = job.plan
    return {**identity(job.source, plan.spec, job.weight, job.bias, plan.backend, job.dtype, fmt),
            "tiles": len(plan.tiles), "block": [t.out.shape for t in plan.tiles[:1]][0],
            "output": os.path.abspath(out)}


def prepare_output(out: Path, ident: dict, shape: tuple[int, ...], itemsize: int, *, resume: bool,
                   overwrite: bool) -> str:
    """Decide, before anything is created, what a streamed run into ``out`` does, and check
    that it can: 'resume' (an interrupted run's journal and partial output are there, and
    ``resume``), 'complete' (``out`` is whole, ``resume``, and its receipt says it is this
    computation: nothing to do), or 'fresh'.  Refused with a ValueError naming the way out:
    an interrupted run without ``resume`` or ``overwrite``; an output that exists without
    ``overwrite`` (or ``resume`` on a match); a complete output whose receipt is another
    computation's, or that has none; anything files/guard.py may not replace; a folder
    that is missing or read-only; a file system without room for what is left to write."""
    partial, main, receipt = arrays.partial_path(out), journal_path(out), receipt_path(out)
    folder = out.parent
    while not folder.exists() and folder != folder.parent:  # conv_file makes the missing ones
        folder = folder.parent
    guard.check_folder(folder, out)
    for path in (out, partial, main, receipt):
        guard.check_replaceable(path, "overwrite")
    interrupted = guard.describe(main) is not None and guard.describe(partial) is not None
    if interrupted and resume:
        state = "resume"
    elif interrupted and not overwrite:
        done = progress_of(main)
        so_far = f" ({done[0]}/{done[1]} tiles done)" if done else ""
        raise ValueError(f"{str(out)!r}: an interrupted run's journal is there{so_far}; run the same command with "
                         "--resume (resume=True) to finish it, or --overwrite (overwrite=True) to start over")
    elif guard.describe(out) is not None and resume:
        found = read_receipt(out)
        if found is None:
            raise ValueError(f"{str(out)!r} exists without a receipt of a streamed haloconv run (nothing to resume, "
                             "and no telling whether it is this computation's); --overwrite (overwrite=True) "
                             "replaces it")
        why = receipt_mismatch(found, ident)
        if why is not None:
            raise ValueError(f"{str(out)!r} was computed with {why}; this run asks for another result: "
                             "--overwrite (overwrite=True) replaces it")
        return "complete"
    elif guard.describe(out) is not None and not overwrite:
        raise ValueError(f"{str(out)!r} exists; pass --overwrite (overwrite=True) to replace it")
    else:
        state = "fresh"
    needed = math.prod(shape) * itemsize
    if state == "resume":  # the tiles written hold their blocks already (a fresh output is sparse)
        needed = max(0, needed - guard.allocated(partial))
    guard.check_space(folder, needed, f"the output {str(out)!r}")
    return state


def complete_result(source: DiskArray, tiler, weight, bias, dtype, budget: int, out: Path) -> StreamResult:
    """The result of a run that found its output complete: the tiles it would make now,
    all of them skipped, nothing computed."""
    baseline = resident(os.getpid())
    allowance = max(budget - baseline - MARGIN_BYTES, 1 << 20)
    job = job_for(source, tiler, weight, bias, dtype, allowance, 1)
    result = StreamResult(job.plan, out, 0.0, budget, baseline, skipped=len(job.plan.tiles), complete=True)
    result.peak_rss[0] = baseline
    return result


def claim_output(out: Path, source: DiskArray, spec: ConvSpec, weight, bias, backend: str, dtype, fmt: str, *,
                 resume: bool, overwrite: bool) -> bool:
    """prepare_output for this computation, then what it decided: True when ``out`` is
    complete (nothing to do); else the output's folders made and, starting afresh, what an
    earlier run left discarded (its journals, partial output and old receipt: only what
    guard.py says is haloconv's)."""
    dtype = float_dtype(dtype)
    state = prepare_output(out, identity(source, spec, weight, bias, backend, dtype, fmt), spec.output_shape,
                           dtype.itemsize, resume=resume, overwrite=overwrite)
    if state == "complete":
        return True
    if state == "fresh":
        for path in (journal_path(out), *rank_journals(out), arrays.partial_path(out), receipt_path(out)):
            guard.remove_own(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return False


def finish(journal: Journal, out: Path, sync: bool) -> None:
    """A run whose tiles are all written: its receipt (the journal's header) beside the
    output, the output renamed into place, then the journal gone."""
    journal.close()
    write_json(receipt_path(out), journal.receipt(), sync)
    arrays.promote(arrays.partial_path(out), out, sync)
    journal.remove()


def resident(pid: int) -> int:
    return int(proc_mb(pid) * 2**20)


def data_allowance(memory_budget: int, baseline: int) -> int:
    allowance = memory_budget - baseline - MARGIN_BYTES
    if allowance <= 0:
        raise ValueError(f"memory_budget={memory_budget / 2**20:.0f} MiB is below what a process holds before any "
                         f"data ({baseline / 2**20:.0f} MiB: Python and its libraries) plus {MARGIN_BYTES >> 20} MiB "
                         "of slack; raise it")
    return allowance


def job_for(source: DiskArray, tiler, weight, bias, dtype, allowance: int, min_tiles: int,
            resume_at: Path | None = None) -> Job:
    """The Job without its output: the plan's tiles cut by ``tiler`` (planner/streaming.
    StreamTiler, handed down by the planner) to fit the allowance (what one tile may hold at
    its peak), at least ``min_tiles`` of them; the filters in ``dtype``.  ``resume_at``:
    the output a resumed run goes on with, whose journal's tiles are kept."""
    dtype = float_dtype(dtype)
    plan = tiler.plan(allowance, min_tiles, resume_at)
    return Job(plan, source, None, np.ascontiguousarray(as_array(weight), dtype),
               None if bias is None else np.ascontiguousarray(as_array(bias), dtype), dtype)


def open_output(job: Job, out: Path, fmt: str, resume: bool, sync: bool = False) -> tuple[Job, Journal]:
    """Create the .partial output and a fresh journal, or (``resume``, both there) open
    them and read which tiles are finished.  Journals of SPMD ranks (OUT.journal.rN) are
    folded into the main one.  ``sync``: the output's writes are made durable (its flush)
    before a tile is journaled, and the journal's lines too; else a tile is journaled once
    the operating system has its output, and the journal is trusted only until the
    machine restarts (files/journal.py)."""
    head = header(job, out, fmt)
    partial, main = arrays.partial_path(out), journal_path(out)
    parts = rank_journals(out)
    if resume and partial.exists() and main.exists():
        journal = Journal(main, head, resume=True, sync=sync)
        for part in parts:
            other = Journal(part, head, resume=True, sync=sync)
            other.close()
            for index in sorted(other.done - journal.done):
                journal.record(index)
        sink = arrays.open_output(partial, fmt, job.plan.spec.output_shape, job.dtype)
    else:
        block = job.plan.tiles[0].out.shape  # the zarr chunks: no two tiles share one
        sink = arrays.create_output(partial, fmt, job.plan.spec.output_shape, job.dtype, block)
        journal = Journal(main, head, resume=False, sync=sync)
    for part in parts:
        guard.remove_own(part)
    # written around the page cache where the file system allows it (files/arrays.py)
    sink = dataclasses.replace(sink, durable=sync, direct=True)
    return Job(job.plan, job.source, sink, job.weight, job.bias, job.dtype), journal


def describe(job: Job, journal: Journal, who: str, budget: int, baseline: int) -> str:
    """The line a streamed run starts with; ``who`` computes it (e.g. '2 processes')."""
    block = job.plan.tiles[0].out.shape
    return (f"streaming: {len(job.plan.tiles)} tiles of {'x'.join(map(str, block))} outputs, {who}, "
            f"budget {budget / 2**20:.0f} MiB per process ({baseline / 2**20:.0f} MiB held before any data)"
            + (f"; resuming: {len(journal.done)} tiles already done" if journal.resumed else ""))
