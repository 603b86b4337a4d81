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
from haloconv.files import arrays, filters
from haloconv.files.pixels import TIFF_SUFFIXES, conversion

from . import options, outputs, report
from .console import Console
from .run import input_line


def source(args: argparse.Namespace) -> arrays.DiskArray | None:
    """The input file to stream, when --stream is given or the input and output would not
    fit --memory-budget in memory; None for an in-memory run."""
    budget = options.budget(args)
    streamable = args.input is not None and Path(args.input).suffix.lower() in (".npy", ".zarr", *TIFF_SUFFIXES)
    if not args.stream and (budget is None or not streamable):
        return None
    if not streamable:
        raise ValueError("--stream reads its input from a .npy, .tif/.tiff or .zarr file (not --random/--sample "
                         f"or {args.input!r})")
    found = arrays.open_input(args.input, args.integers, args.layout)
    itemsize = 8 if args.dtype == "float64" else 4
    in_memory = 2 * math.prod(found.logical_shape) * itemsize  # the input as floats, and an output as big
    return found if args.stream or in_memory > budget else None


def run(args: argparse.Namespace, console: Console, source: arrays.DiskArray) -> int:
    from haloconv import outofcore

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
    weight, groups = filters.load_kernel(args.kernel, shape[1], len(shape) - 2)
    name = Path(args.input).name.split(".")[0]
    found = outputs.targets(args.output, outputs.default_stem(name, args.kernel), image=False,
                            image_format=args.image_format, streamed=True, stream_format=args.out_format)
    out = found[0].path
    if args.resume and out.exists() and not arrays.partial_path(out).exists():
        console.say(f"{out} is complete (no partial output to resume); nothing to do")
        return 0
    how = (f"{Path(source.path).suffix[1:]}: {conversion(source.dtype, source.integers)}, {source.layout}; "
           f"{source.nbytes / 2**20:.0f} MiB, streamed")
    rank0 = os.environ.get("RANK", "0") == "0"
    if rank0:  # under torchrun, rank 0 checks the outputs and speaks
        outputs.prepare(found, args.output, overwrite=args.overwrite, mkdir=args.mkdir)
        console.say(input_line(args.input, shape, np.dtype(args.dtype), how, args.kernel, weight.shape, groups))
    kw = dict(memory_budget=budget, stride=options.int_list(args.stride, "--stride"),
              padding=options.padding(args.padding), dilation=options.int_list(args.dilation, "--dilation"),
              groups=groups, padding_mode=args.padding_mode, backend=args.backend, dtype=args.dtype,
              resume=args.resume, sync=args.sync, profile=args.profile, integers=args.integers, layout=args.layout)
    with console.tracker() as progress:
        if options.under_torchrun():  # every rank streams its share through the shared files
            import torch.distributed as dist

            dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
            try:
                res = outofcore.conv_file(args.input, weight.astype(args.dtype), out, spmd=True, progress=progress,
                                          **kw)
                dist.barrier()
            finally:
                dist.destroy_process_group()
            if res is None:  # not rank 0: rank 0 reports
                return 0
        else:
            res = outofcore.conv_file(args.input, weight.astype(args.dtype), out, workers=args.workers,
                                      engine=args.engine, on_failure=args.on_failure, timeout=args.timeout,
                                      progress=progress, **kw)
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
