"""`haloconv run` out of core: tiles sized by --memory-budget, read from the input file and
written into the output file (haloconv.conv_file), in this process, by worker processes or
by torchrun ranks."""

from __future__ import annotations

import argparse
import math
import os
from datetime import timedelta
from pathlib import Path

import numpy as np

from haloconv.compute import backends
from haloconv.files import arrays, guard, journal, named_kernels
from haloconv.files.pixels import TIFF_SUFFIXES, conversion

from . import interrupt, options, outputs, report
from .console import Console
from .run import input_line


def source(args: argparse.Namespace) -> arrays.DiskArray | None:
    """The input file to stream, when --stream is given or an in-memory run would not keep
    this process within --memory-budget; None for an in-memory run.  An input that would
    not fit and cannot be streamed is refused, saying what the run would need."""
    budget = options.budget(args)
    streamable = args.input is not None and Path(args.input).suffix.lower() in (".npy", ".zarr", *TIFF_SUFFIXES)
    if not args.stream and budget is None:
        return None
    if args.stream and not streamable:
        raise ValueError("--stream reads its input from a .npy, .tif/.tiff or .zarr file (not --random/--sample "
                         f"or {args.input!r})")
    found = arrays.open_input(args.input, args.integers, args.layout) if streamable else None
    if args.stream:
        return found
    need, parts = in_memory_need(args, found)
    if need <= budget:
        return None
    why = (f"in memory it would need about {need / 2**20:.0f} MiB of the {budget / 2**20:.0f} MiB budget "
           f"({parts})")
    if found is None:
        raise ValueError(f"--memory-budget {args.memory_budget}: {why}, and only .npy, .tif/.tiff and .zarr inputs "
                         "stream: raise the budget, or convert the input to one of them")
    args.stream_reason = why
    return found


def in_memory_need(args: argparse.Namespace, found: arrays.DiskArray | None) -> tuple[int, str]:
    """The peak resident bytes of this process for an in-memory run, and its parts in words:
    what it holds now with the libraries the run will import (imported here, as a streamed
    run counts them: stream_job.load_libraries), the input as floats (and as read, when it
    is converted), the output, and the streamed runs' margin for heap slack."""
    from haloconv.engines.stream import job as stream_job

    itemsize = 8 if args.dtype == "float64" else 4
    raw = 0
    if found is not None:
        shape = found.logical_shape
        if np.dtype(found.dtype) != np.dtype(args.dtype):  # read as it is, then converted
            raw = math.prod(found.shape) * np.dtype(found.dtype).itemsize
    else:
        shape = _picture_shape(args)
        raw = math.prod(shape) * 2  # the decoded pixels (8 or 16 bits) before they become floats
    weight, groups = named_kernels.load_kernel(args.kernel, shape[1], len(shape) - 2)
    spec = options.spec(args, shape, weight.shape, groups)
    threads_filter = backends.base.is_filter(spec) and args.engine in (None, "threads") and \
        (args.backend or backends.default_for(spec)) in ("auto", "opencv", "separable")
    stream_job.load_libraries("opencv" if threads_filter else "torch", spec)
    held = stream_job.resident(os.getpid())
    data = math.prod(shape) * itemsize + math.prod(spec.output_shape) * itemsize + raw
    return held + data + stream_job.MARGIN_BYTES, (
        f"{held / 2**20:.0f} MiB for Python and its libraries, {data / 2**20:.0f} MiB of input and output, "
        f"{stream_job.MARGIN_BYTES >> 20} MiB of slack")


def _picture_shape(args: argparse.Namespace) -> tuple[int, ...]:
    """The (N, C, H, W) an input that is not streamed will have, from its header alone."""
    if args.random:
        return options.random_shape(args.random)
    from PIL import Image

    from haloconv.files import images

    path = images.sample_path(args.sample) if args.sample else Path(args.input)
    try:
        with Image.open(path) as im:
            bands = len(im.getbands())
            return (1, 1 if bands <= 2 else 3, im.height, im.width)
    except Exception as e:  # noqa: BLE001 - the run itself says what is wrong with the file
        raise ValueError(f"cannot read input {str(path)!r}: {e}") from None


def _check_kernel(args: argparse.Namespace, out: Path) -> None:
    """--resume on a complete output made with another named kernel: refused in the kernel's
    own words (conv_file checks every part of the computation, in its own)."""
    found = journal.read_receipt(out) if args.resume and not arrays.partial_path(out).exists() else None
    if found is not None and found.get("kernel") not in (None, args.kernel):
        raise ValueError(f"{out} was computed with {found['kernel']}; this run asks {args.kernel}: use --overwrite "
                         "to replace it")


def _stopped(what: str, out: Path) -> str:
    """How far a stopped run got and how to go on, from its journal, in words."""
    done = journal.progress_of(journal.journal_path(out))
    if done is None:
        return what or ""
    lead = f"{what} after" if what else "; stopped after"
    return (f"{lead} {done[0]}/{done[1]} tiles; run the same command with --resume to finish"
            + (" once the cause is fixed" if not what else ", or --overwrite to start over"))


def _stream(args: argparse.Namespace, console: Console, source: arrays.DiskArray, spec, weight, out: Path):
    """The streamed run in this process, on worker processes, or as one rank of torchrun:
    the options read into values once, the tiles cut by the planner, run by the one
    dispatch (as haloconv.conv_file runs)."""
    from haloconv import dispatch
    from haloconv.engines.host import default_workers
    from haloconv.options import StreamOptions
    from haloconv.planner import streaming

    spmd = options.under_torchrun()
    with console.tracker() as progress:
        how = StreamOptions.of(memory_budget=options.budget(args), workers=1 if spmd else
                               args.workers or default_workers(), dtype=args.dtype, resume=args.resume,
                               overwrite=args.overwrite, sync=args.sync, on_failure=args.on_failure,
                               timeout=args.timeout, progress=progress)
        w = weight.astype(args.dtype)
        tiler = streaming.tiler_for(spec, w, args.backend, args.profile, how.dtype, source.dtype, None)
        fmt = out.suffix.lower().lstrip(".")
        if not spmd:
            return dispatch.stream(source, tiler, w, None, out, fmt, how, args.engine)
        import torch.distributed as dist  # every rank streams its share through the shared files

        dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
        try:
            res = dispatch.stream(source, tiler, w, None, out, fmt, how, "torchrun")
            dist.barrier()
        finally:
            dist.destroy_process_group()
        return res


def run(args: argparse.Namespace, console: Console, source: arrays.DiskArray) -> int:
    for flag, bad in (("--verify", args.verify), ("--partition", args.partition != "auto"),
                      ("--worker-speeds", args.worker_speeds is not None),
                      ("--exchange master", args.exchange == "master")):
        if bad:
            raise ValueError(f"{flag} does not apply to a streamed run (tiles are sized by --memory-budget and "
                             "pulled by whichever process is free; nothing is held whole in memory to verify)")
    budget = options.budget(args)
    if budget is None:
        raise ValueError("--stream needs --memory-budget: the peak resident memory allowed to each process")
    shape = source.logical_shape
    weight, groups = named_kernels.load_kernel(args.kernel, shape[1], len(shape) - 2)
    name = Path(args.input).name.split(".")[0]
    found = outputs.targets(args.output, outputs.default_stem(name, args.kernel), image=False,
                            image_format=args.image_format, streamed=True, stream_format=args.out_format)
    out = found[0].path
    _check_kernel(args, out)
    how = (f"{Path(source.path).suffix[1:]}: {conversion(source.dtype, source.integers)}, {source.layout}; "
           f"{source.nbytes / 2**20:.0f} MiB, streamed"
           + (f": {args.stream_reason}" if getattr(args, "stream_reason", None) else ""))
    rank0 = os.environ.get("RANK", "0") == "0"
    if rank0:  # under torchrun, rank 0 checks the outputs and speaks
        outputs.prepare(found, args.output, overwrite=args.overwrite, mkdir=args.mkdir, streamed=True)
        outputs.check_side_files(args)
        console.say(input_line(args.input, shape, np.dtype(args.dtype), how, args.kernel, weight.shape, groups))
    spec = options.spec(args, shape, weight.shape, groups)
    try:
        with interrupt.describing(lambda: _stopped("interrupted", out)):
            res = _stream(args, console, source, spec, weight, out)
    except OSError as e:
        console.error(guard.os_error_line(e) + _stopped("", out))
        return 1
    if res is None:  # not rank 0: rank 0 reports
        return 0
    if res.complete:
        console.say(f"{out} is complete (its receipt is this run's: same input, kernel and options); nothing to do")
        return 0
    if rank0:
        journal.annotate_receipt(out, kernel=args.kernel)
    if res.failures:
        console.say(f"survived {len(res.failures)} worker fault(s); finished with {len(res.peak_rss)} processes")
    console.detail(res.table())
    console.say(f"plan: {len(res.plan.tiles)} tiles of {'x'.join(map(str, res.plan.tiles[0].out.shape))}"
                f"{f' ({res.skipped} done before)' if res.skipped else ''}, backend {res.plan.backend}; peak RSS "
                f"{max(res.peak_rss.values()) / 2**20:.0f} MiB of the {res.budget / 2**20:.0f} MiB budget")
    console.say(f"backend {res.plan.backend}: {backends.get(res.plan.backend).guarantee}")
    console.say(f"wrote {out} ({res.wall_seconds:.2f}s)")
    if args.report:
        rep = {"stream": True, "output": str(out), "outputs": [str(out)], "backend": res.plan.backend,
               "engine": "torchrun" if options.under_torchrun() else args.engine,
               "wall_seconds": res.wall_seconds, "budget": res.budget,
               "baseline": res.baseline, "tiles": len(res.plan.tiles), "skipped": res.skipped,
               "block": list(res.plan.tiles[0].out.shape), "failures": res.failures,
               "ranks": {str(r): {"tiles": res.tiles_done.get(r, 0), "bytes_read": res.bytes_read.get(r, 0),
                                  "peak_rss": res.peak_rss[r]} for r in res.peak_rss},
               "load": os.getloadavg()}
        rep.update(report.header(args, args.input, how, list(shape), args.dtype, list(weight.shape), groups))
        report.emit(rep, args.report, console)
    return 0
