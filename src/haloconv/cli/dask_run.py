"""`haloconv run INPUT --dask local:N|ADDRESS -o OUT.zarr`: the input file read as a dask array
chunk by chunk, filtered through haloconv.conv's graph (engines/dask_graph: a task per output
chunk, each reading its chunk and its neighbours' strips), written chunk by chunk into a Zarr
output, on a dask.distributed cluster: one of N worker processes started for the run, or a
running scheduler.  Every worker holds a few chunks and their strips at a time: memory per
worker is bounded by the chunks, whatever the input's size.

The output is written under a partial name and renamed when every chunk is in (as streamed
runs do, files/arrays.promote); the checks before writing are every run's (cli/outputs)."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from haloconv import planner
from haloconv.engines import dask_graph
from haloconv.files import arrays, guard, named_kernels
from haloconv.files.chunks import KEPT_CHUNKS, Reader, forget_chunks
from haloconv.files.chunks import chunks_of as zarr_chunks
from haloconv.files.pixels import conversion
from haloconv.tiling.boxes import Box
from haloconv.tiling.geometry import block_extent
from haloconv.tiling.plan import chunk_plan

from . import options, outputs
from .console import Console
from .run import input_line

# chunks of an input file that has none of its own (.npy, striped TIFF): this many values
# per chunk at most, whole channels, square-ish in the spatial axes
CHUNK_VALUES = 1 << 22


def chunk_lengths(n: int, chunk: int) -> tuple[int, ...]:
    """The lengths of an axis of ``n`` cut every ``chunk`` (geometry.block_extent)."""
    return tuple(b - a for a, b in block_extent(n, chunk))


def write(out: arrays.DiskArray, box: Box, block: np.ndarray) -> None:
    """One output chunk into the Zarr output (on the worker that computed it)."""
    out.write(box, block)


def chunks_of(source: arrays.DiskArray) -> tuple[int, ...]:
    """The chunk shape over the logical axes: a Zarr file's own (whole chunks are read
    once), else about CHUNK_VALUES values with whole samples' channels."""
    shape = source.logical_shape
    own = zarr_chunks(source)
    if own is not None:
        return own
    side = max(16, int((CHUNK_VALUES / shape[1]) ** (1 / (len(shape) - 2))))
    return (1, shape[1], *(min(n, side) for n in shape[2:]))


def cluster(address: str):
    """A distributed Client: on N worker processes started for this run ('local:N'), or on
    the scheduler at ``address``."""
    try:
        import distributed
    except ImportError:
        raise ValueError("--dask runs on dask.distributed: pip install 'haloconv[dask]'") from None
    if address.startswith("local:"):
        n = options.int_list(address.removeprefix("local:"), "--dask local:N")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"--dask local:N needs N >= 1 workers, got {address!r}")
        lc = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        return distributed.Client(lc), lc
    client = distributed.Client(address, timeout="10s")
    try:  # a scheduler without workers would wait for them for ever
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError:
        client.close()
        raise ValueError(f"--dask {address}: no worker joined the scheduler in {WORKER_WAIT_S} s (start them with "
                         f"`dask worker {address}`)") from None
    return client, None


WORKER_WAIT_S = 60


def run(args: argparse.Namespace, console: Console) -> int:
    for flag, bad in (("--verify", args.verify), ("--partition", args.partition != "auto"),
                      ("--workers", args.workers is not None), ("--engine", args.engine not in (None, "threads")),
                      ("--resume", args.resume), ("--worker-speeds", args.worker_speeds is not None),
                      ("--stream", args.stream)):
        if bad:
            raise ValueError(f"{flag} does not apply to a --dask run (the input's chunks are the tiles, and the "
                             "Dask cluster runs them)")
    if args.input is None or Path(args.input).suffix.lower() not in (".npy", ".zarr", ".tif", ".tiff"):
        raise ValueError("--dask reads its input from a .npy, .tif/.tiff or .zarr file")
    source = arrays.open_input(args.input, args.integers, args.layout)
    shape = source.logical_shape
    weight, groups = named_kernels.load_kernel(args.kernel, shape[1], len(shape) - 2)
    name = Path(args.input).name.split(".")[0]
    found = outputs.targets(args.output, outputs.default_stem(name, args.kernel), image=False,
                            image_format=args.image_format, streamed=True, stream_format="zarr")
    out = found[0].path
    if out.suffix != ".zarr":
        raise ValueError(f"--dask writes a .zarr output, got {str(out)!r}")
    outputs.prepare(found, args.output, overwrite=args.overwrite, mkdir=args.mkdir, streamed=True)
    weight = weight.astype(args.dtype)
    one = planner.plan(shape, weight, stride=options.int_list(args.stride, "--stride"),
                       padding=options.padding(args.padding), dilation=options.int_list(args.dilation, "--dilation"),
                       groups=groups, padding_mode=args.padding_mode, backend=args.backend,
                       partition=(1,) * len(shape), engine="threads")  # the backend a tile takes
    chunks = chunks_of(source)
    plan = chunk_plan(one.spec, [chunk_lengths(n, c) for n, c in zip(shape, chunks)], one.backend)
    # each task reads its own window from the file: no task holds an input chunk for another
    reader = Reader(source, args.dtype, chunks if source.kind == "zarr" else None)
    y = dask_graph.from_reader(plan, reader, args.dtype, weight, None)
    # Zarr chunks of the output's (regular) chunks, so no two tasks write one Zarr chunk
    regular = tuple(max(c) for c in y.chunks)
    y = y.rechunk(regular) if any(len(set(c[:-1])) > 1 or c[-1] > c[0] for c in y.chunks) else y
    how = (f"{Path(source.path).suffix[1:]}: {conversion(source.dtype, source.integers)}, {source.layout}; "
           f"{source.nbytes / 2**20:.0f} MiB, chunks {'x'.join(map(str, chunks))}")
    console.say(input_line(args.input, shape, np.dtype(args.dtype), how, args.kernel, weight.shape, groups))
    partial = arrays.partial_path(out)
    t0 = time.perf_counter()
    client, local = cluster(args.dask)
    try:
        info = client.scheduler_info()
        workers = len(info["workers"])
        console.say(f"plan: {math.prod(y.numblocks)} output chunks of {'x'.join(map(str, y.chunksize))} on "
                    f"{workers} Dask workers ({args.dask})")
        target = arrays.create_output(partial, "zarr", y.shape, args.dtype, regular)
        client.run(_warm, plan, weight)
        start = client.run(_reset_peak)
        _compute(client, y, target, console)
        peaks = client.run(_peak)
        client.run(forget_chunks)
        arrays.promote(partial, out, sync=args.sync)
    except OSError as e:
        console.error(guard.os_error_line(e))
        return 1
    finally:
        client.close()
        if local is not None:
            local.close()
    threads = max(w["nthreads"] for w in info["workers"].values())
    cached = KEPT_CHUNKS * math.prod(chunks) * np.dtype(args.dtype).itemsize if reader.chunks else 0
    bound = worker_bound(plan, np.dtype(args.dtype).itemsize, threads, workers, cached)
    grew = max(peaks[w] - start[w] for w in start)
    console.say(f"peak RSS per worker: {', '.join(f'{peaks[w] / 2**20:.0f}' for w in sorted(peaks))} MiB, at most "
                f"{grew / 2**20:.0f} MiB over its start (the chunks' bound: {bound / 2**20:.0f} MiB)")
    console.say(f"wrote {out} ({time.perf_counter() - t0:.2f}s)")
    return 0


# what a worker holds beyond the tiles' data: its threads' malloc arenas and the Zarr
# codec's buffers (RUNTIME_BYTES), and Dask's record of each task it ran (TASK_BYTES a
# task; its logs are bounded, so this levels off).  Measured with 256^2 to 512^2 chunks:
# 5-9 MiB, and about 20 KiB a task
RUNTIME_BYTES = 16 << 20
TASK_BYTES = 32 << 10


def worker_bound(plan, itemsize: int, threads: int, workers: int, cached: int = 0) -> int:
    """The most a worker's resident memory grows by in a run (docs/architecture.md, "Dask"):
    per thread, one tile at a time — its pieces as read and the window they are copied
    into (2 windows), its output computed and encoded for the store (2 outputs) — whatever
    the input's size; plus RUNTIME_BYTES and TASK_BYTES for each of its share of the tasks
    (a tile and its write); and ``cached``, the bytes of the chunks Reader keeps."""
    window = max(math.prod(t.window.shape) for t in plan.tiles) * itemsize
    out = max(math.prod(t.out.shape) for t in plan.tiles) * itemsize
    return (threads * (2 * window + 2 * out) + cached + RUNTIME_BYTES
            + TASK_BYTES * -(-2 * len(plan.tiles) // workers))


def _warm(plan, weight: np.ndarray) -> None:
    """Compute the plan's first tile on zeros, so a worker's start is measured with what a
    task's first call sets up (the backend's library, torch's thread pools): the run's
    growth is then its data's."""
    forget_chunks()  # a worker that ran before may hold chunks of a file since rewritten
    dask_graph.read_tile(dask_graph.one_tile(plan, plan.tiles[0]), lambda box: np.zeros(box.shape, weight.dtype),
                         weight, None)


def _reset_peak() -> int:
    """This process's resident bytes now, its peak reset to them (/proc clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _peak() -> int:
    return _status("VmHWM")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split(f"{field}:")[1].split()[0]) << 10


def _compute(client, y, target: arrays.DiskArray, console: Console) -> None:
    """Each output chunk computed and written on the cluster, progress counted as Dask
    finishes them; the first error raised here."""
    import dask
    import distributed

    starts = [np.cumsum((0, *c)).tolist() for c in y.chunks]
    writes = []
    for index, block in np.ndenumerate(y.to_delayed()):
        box = Box(tuple(starts[d][i] for d, i in enumerate(index)),
                  tuple(starts[d][i + 1] for d, i in enumerate(index)))
        writes.append(dask.delayed(write, pure=False)(target, box, block))
    futures = client.compute(writes)
    with console.tracker() as progress:
        for done, _ in enumerate(distributed.as_completed(futures), 1):
            progress(done, len(futures))
    client.gather(futures)
