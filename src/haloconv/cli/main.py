"""`haloconv` command line: `haloconv run` convolves an image or array across workers."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

from haloconv import planner, units
from haloconv.cli import outputs, report
from haloconv.compute import backends
from haloconv.engines import array_threads
from haloconv.engines.errors import WorkerError
from haloconv.engines.execution import SCHEDULES, execution_from_reports
from haloconv.engines.host import default_workers
from haloconv.files import arrays, filters, images
from haloconv.files.pixels import TIFF_SUFFIXES
from haloconv.model import cost, scaling
from haloconv.planning.partition import Partition
from haloconv.planning.spec import ConvSpec

# torch (and the engines that use it) are imported by the paths that compute with it: a
# filter run on OpenCV in this process never imports it (docs/architecture.md, "Why filters
# run without torch")


def _int_list(text: str, name: str) -> int | tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{name} must be an int or comma-separated ints, got {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def _padding(text: str) -> int | tuple[int, ...] | str:
    return text if text in ("same", "valid") else _int_list(text, "--padding")


def _partition(text: str) -> Partition:
    """--partition: a name, or split counts 'N,C,H,W' (planning.partition.Partition)."""
    if "," in text or text.isdigit():
        return Partition.of(tuple(_int_list(text, "--partition") if "," in text else (int(text),)))
    return Partition.of(text)


def _random_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--random must look like HxW, CxHxW or NxCxHxW, got {text!r}") from None
    if len(dims) == 2:
        return (1, 1, *dims)
    if len(dims) == 3:
        return (1, *dims)
    if len(dims) in (4, 5):
        return dims
    raise ValueError(f"--random must look like HxW, CxHxW or NxCxHxW, got {text!r}")


def _add_problem_args(r: argparse.ArgumentParser) -> None:
    """The input, the kernel, the conv arguments and the partition (run and plan)."""
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("input", nargs="?", help="PNG/JPEG/TIFF image or .npy array")
    src.add_argument("--random", metavar="HxW", help="random input instead of a file (HxW, CxHxW, NxCxHxW)")
    src.add_argument("--sample", choices=sorted(images.SAMPLES), help="a sample image shipped with matplotlib")
    r.add_argument("--kernel", default="sobel-x",
                   help=f"filter name ({', '.join(filters.NAMES)}) or a .npy weight (default sobel-x)")
    r.add_argument("--workers", type=int, default=None,
                   help="number of workers (default: cores); a streamed run on threads: the cores its compute uses")
    r.add_argument("--partition", default="auto",
                   help="auto (the cost model chooses), batch, rows|horizontal, cols|vertical, depth, grid, "
                        "channels, or split counts over N,C_out,*spatial e.g. 1,1,2,2")
    r.add_argument("--backend", default=None, choices=(*backends.BACKENDS, "auto"),
                   help="tile compute: " + "; ".join(f"{name}: {b.guarantee}" for name, b in backends.REGISTRY.items())
                        + "; auto: the cost model picks the fastest (default: auto for one-channel and depthwise "
                          "filters, torch for layers that mix channels)")
    r.add_argument("--profile", default=None, metavar="PROFILE.json",
                   help="cost-model profile (default: the one `haloconv calibrate` wrote, else built-in defaults)")
    r.add_argument("--memory-budget", default=None, metavar="BYTES",
                   help="per-process memory limit, e.g. 2GB or 500MB: partition=auto keeps each worker's data "
                        "under it; an input that does not fit is streamed, each process's peak RSS under it")
    r.add_argument("--weights", default=None,
                   help="relative worker speeds, comma-separated, or 'auto': measured by the processes first")
    r.add_argument("--stride", default="1")
    r.add_argument("--padding", default="same", help="int, ints, 'same' or 'valid' (default same)")
    r.add_argument("--dilation", default="1")
    r.add_argument("--padding-mode", default="zeros", help="zeros, reflect, replicate, circular")
    r.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    r.add_argument("--seed", type=int, default=0, help="seed for --random")


def build_parser() -> argparse.ArgumentParser:
    from haloconv import __version__

    p = argparse.ArgumentParser(prog="haloconv", description=__doc__)
    p.add_argument("--version", action="version", version=f"haloconv {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="convolve an image/array across workers and report the plan")
    _add_problem_args(r)
    r.add_argument("--engine", default=None, choices=("processes", "threads"),
                   help="processes: worker processes in a gloo group (default in memory); threads: in this "
                        "process (default for streamed runs: read, compute and write overlapped). Under "
                        "torchrun every rank runs its own share (SPMD)")
    r.add_argument("--exchange", default="neighbours", choices=("neighbours", "master"),
                   help="halos swapped between neighbours (default), or whole windows sent by the master")
    r.add_argument("--timeout", type=float, default=60.0, help="seconds before a silent worker is an error")
    r.add_argument("--on-failure", default="retry", choices=("retry", "fail"),
                   help="a worker dies mid-run: go on with the workers left (default), or stop")
    r.add_argument("--schedule", default="static", choices=SCHEDULES,
                   help="static (default): one tile per worker; dynamic: --tiles tiles pulled by whichever "
                        "process is free (unequal workers; a lost worker's unfinished tiles go to the others)")
    r.add_argument("--tiles", type=int, default=None, help="tiles of a dynamic schedule (default 4 per worker)")
    r.add_argument("--report", default=None, metavar="RUN.json",
                   help="write per worker and phase: bytes, messages, seconds, predicted bytes, the plan, load "
                        "('-': to stdout)")
    r.add_argument("-o", "--output", default=None,
                   help="the output file, its suffix picking the format (.npy, .tif/.tiff, .png, .zarr); any other "
                        "name is a prefix: PREFIX.npy (+ PREFIX.png/.tif for an image input; PREFIX.<--out-format> "
                        "streamed); a folder holds <input>-<kernel> files (default: out/<input>-<kernel>)")
    r.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: refuse)")
    r.add_argument("--mkdir", action="store_true", help="create the folder -o names if it is missing (default: refuse)")
    r.add_argument("--image-format", choices=("png", "tif"), default="png",
                   help="the picture beside PREFIX.npy for an image input (default png)")
    r.add_argument("--stream", action="store_true",
                   help="out of core: tiles read from the input file and written into the output file, in this "
                        "process (--engine threads, the default) or by worker processes (--engine processes); "
                        "automatic when the input and output do not fit --memory-budget")
    r.add_argument("--out-format", choices=arrays.FORMATS, default="npy",
                   help="streamed output: PREFIX.npy (default), PREFIX.tif or PREFIX.zarr")
    r.add_argument("--resume", action="store_true",
                   help="streamed runs: go on from the journal of an interrupted run (finished tiles are kept)")
    r.add_argument("--verify", action="store_true",
                   help="also run the single-node call of the backend and compare (fft: within its tolerance)")
    pl = sub.add_parser("plan", help="rank the candidate partitions by predicted cost; draw the chosen one")
    _add_problem_args(pl)
    pl.add_argument("--weight-shape", default=None, metavar="COxCIxKHxKW",
                    help="a layer's weight shape instead of --kernel (e.g. 64x64x3x3)")
    pl.add_argument("--engine", default="processes", choices=("processes", "threads"))
    pl.add_argument("--top", type=int, default=12, help="candidates to print")
    pl.add_argument("--png", default=None, metavar="PLAN.png", help="draw the chosen partition into this file")
    pl.add_argument("--simulate-workers", default=None, metavar="1,2,4,...",
                    help="project strong/weak scaling over these worker counts (a cluster of such workers)")
    pl.add_argument("--bandwidth", default=None, help="link bandwidth for the projection, e.g. 25GB/s")
    pl.add_argument("--latency", default=None, help="message latency for the projection, e.g. 5us")
    pl.add_argument("--scaling-png", default=None, metavar="SCALING.png",
                    help="plot the projection into this file")
    b = sub.add_parser("bench", help="run the benchmarks; write markdown tables and PNG plots into a folder")
    b.add_argument("--out", default="bench", help="folder (default: bench/)")
    b.add_argument("--only", default="accuracy,peers,scaling",
                   help="which: accuracy (cost model vs measured), peers (vs OpenCV/scipy/dask-image/torch), scaling")
    b.add_argument("--quick", action="store_true", help="8 model configurations, 2 runs each; peers once")
    b.add_argument("--peers-size", type=int, default=8192, help="image side for the peer benchmark")
    b.add_argument("--profile", default=None, metavar="PROFILE.json")
    c = sub.add_parser("calibrate", help="measure this machine into a cost-model profile (JSON)")
    c.add_argument("--profile", default=None, metavar="PATH",
                   help="where to write it (default: the user's cache dir, which the cost model reads)")
    c.add_argument("--quick", action="store_true", help="fewer, smaller measurements (seconds)")
    return p


def _load(args: argparse.Namespace) -> tuple[np.ndarray, bool, str, np.ndarray, int]:
    """(x, is_image, name, weight, groups) from the command line."""
    if args.random:
        shape = _random_shape(args.random)
        gen = np.random.default_rng(args.seed)
        x = gen.standard_normal(shape, dtype=np.float32)
        name, is_image = f"random{'x'.join(map(str, shape))}", False
    else:
        path = images.sample_path(args.sample) if args.sample else Path(args.input)
        x, is_image = images.read_input(path)
        name = path.stem
    x = np.ascontiguousarray(x, dtype=np.dtype(args.dtype))
    weight, groups = filters.load_kernel(args.kernel, x.shape[1], x.ndim - 2)
    return x, is_image, name, weight.astype(x.dtype), groups


def _spec(args: argparse.Namespace, x_shape, w_shape, groups: int) -> ConvSpec:
    return ConvSpec.from_args(x_shape, w_shape, None, stride=_int_list(args.stride, "--stride"),
                              padding=_padding(args.padding), dilation=_int_list(args.dilation, "--dilation"),
                              groups=groups, padding_mode=args.padding_mode)


def _budget(args: argparse.Namespace) -> int | None:
    return None if args.memory_budget is None else units.byte_count(args.memory_budget, "--memory-budget")


def _weights(args: argparse.Namespace) -> list[float] | None:
    if args.weights is None or args.weights == "auto":
        return None
    try:
        return [float(v) for v in args.weights.split(",")]
    except ValueError:
        raise ValueError(f"--weights must be comma-separated numbers or 'auto', got {args.weights!r}") from None


def _plan(args: argparse.Namespace, x_shape, w_shape, groups: int, workers: int | None):
    weights = _weights(args)
    return planner.plan(
        x_shape, w_shape, None,
        stride=_int_list(args.stride, "--stride"), padding=_padding(args.padding),
        dilation=_int_list(args.dilation, "--dilation"), groups=groups,
        padding_mode=args.padding_mode, partition=_partition(args.partition),
        workers=workers, worker_weights=weights, exchange=getattr(args, "exchange", "neighbours"),
        backend=args.backend, memory_budget=_budget(args), profile=args.profile,
        engine=getattr(args, "engine", "processes"),
    )


def _targets(args: argparse.Namespace, name: str, is_image: bool, streamed: bool,
             shape: tuple[int, ...] | None = None) -> list[outputs.Target]:
    """The files this run writes (cli/outputs.py), refused before any compute if they exist
    (without --overwrite) or their folder does not (without --mkdir)."""
    found = outputs.targets(args.output, outputs.default_stem(name, args.kernel), image=is_image,
                            image_format=args.image_format, streamed=streamed, stream_format=args.out_format)
    outputs.prepare(found, args.output, overwrite=args.overwrite, mkdir=args.mkdir, shape=shape)
    return found


def _report(rep: dict, where: str) -> None:
    """The run report: into the file ``where``, or to stdout for '-'."""
    if where == "-":
        print(report.dumps(rep))
    else:
        print(f"wrote {report.write_report(rep, where)}")


def _finish(args, ex, x, w, found: list[outputs.Target]) -> int:
    """Print the run's tables, write the outputs and the report, verify (rank 0 / master)."""
    print(ex.table())
    rep = report.run_report(ex, x.itemsize if isinstance(x, np.ndarray) else x.element_size())
    if ex.engine != "threads":
        print(report.traffic_table(rep))
    y = ex.output if isinstance(ex.output, np.ndarray) else ex.output.cpu().numpy()
    for t in found:
        print(f"wrote {images.write_output(y, t.path, t.fmt)}")
    rep["outputs"] = [str(t.path) for t in found]
    status = 0
    if args.verify:
        import torch

        method = ex.plan.backend
        x, w, out = (torch.as_tensor(a) for a in (x, w, ex.output))
        t1 = time.perf_counter()
        ref = backends.single_node(method, x, w, None, ex.plan.spec)
        t_ref = time.perf_counter() - t1
        # NaN where the reference has NaN counts as equal (an input's NaN spreads alike)
        both_nan = out.isnan() & ref.isnan()
        equal = bool(((out == ref) | both_nan).all())
        gap = (out - ref).abs().masked_fill(both_nan, 0)
        diff = gap.nan_to_num(nan=float("inf")).max().item() if not equal else 0.0
        print(f"verify: single-node {method} {t_ref:.4f}s vs haloconv {ex.wall_seconds:.4f}s; "
              f"max |diff| = {diff:.3g}; bitwise equal: {equal}")
        ok = equal
        b = backends.get(method)
        if not b.exact_for(ex.plan.spec):  # a transform's sizes differ per tile: compared within its stated tolerance
            tolerance = b.tolerance[out.dtype]
            ok = diff <= tolerance * ref.abs().nan_to_num(nan=0.0).max().item()
            print(f"verify: {method} within {tolerance:g} x max|y|: {ok}")
        rep["verify"] = {"bitwise_equal": bool(equal), "max_abs_diff": diff, "single_node_seconds": t_ref,
                         "backend": method, "ok": bool(ok)}
        status = 0 if ok else 1
    if args.report:
        _report(rep, args.report)
    return status


def _warn_not_finite(x: np.ndarray, name: str) -> None:
    """A line on stderr when the input holds NaN or Inf: every output whose kernel reaches
    one is NaN (or Inf) too, here as in the single-node call."""
    if np.isfinite(x).all():  # one pass over the input; counted only when something is not finite
        return
    nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    if nan or inf:
        print(f"haloconv: warning: input {name} holds {nan} NaN and {inf} infinite values; the outputs whose "
              "kernels reach them are not finite either (as in the single-node call)", file=sys.stderr)


def _say_why_fewer(args: argparse.Namespace, plan, itemsize: int, weight: np.ndarray) -> None:
    """When the cost model (--partition auto) runs on fewer workers than --workers asked
    for: one line with its choice, the best split over all of them, and how to force it."""
    if args.workers is None or args.partition != "auto" or plan.workers >= args.workers:
        return
    spec = plan.spec
    ranked = cost.candidates(spec, args.workers, cost.load_profile(args.profile), itemsize,
                             backend=args.backend or backends.default_for(spec), engine=args.engine,
                             memory_budget=_budget(args), weight=weight)
    chosen = next(q for q in ranked if q.plan.splits == plan.splits and q.plan.backend == plan.backend)
    line = (f"the cost model runs this on {plan.workers} of the {args.workers} workers asked for: "
            f"{chosen.label}, predicted {chosen.total_s:.3g} s")
    full = next((q for q in ranked if q.plan.workers == args.workers), None)
    if full is not None:
        line += (f"; the best split over all {args.workers}, {full.label}, is predicted {full.total_s:.3g} s "
                 f"({full.total_s / chosen.total_s:.2f}x): --partition {full.plan.partition} forces it")
    print(line)


def _pool_only(args: argparse.Namespace) -> None:
    if args.engine != "processes" or _under_torchrun():
        if args.schedule != "static" or args.weights == "auto":
            raise ValueError("--schedule dynamic and --weights auto run on the processes engine (not threads "
                             "or torchrun)")


def run(args: argparse.Namespace) -> int:
    source = _stream_source(args)
    if source is not None:
        args.engine = args.engine or "threads"
        _pool_only(args)
        return run_stream(args, source)
    if _under_torchrun():
        _pool_only(args)
        return run_spmd(args)
    for flag, bad in (("--resume", args.resume), ("--out-format", args.out_format != "npy")):
        if bad:
            raise ValueError(f"{flag} applies to streamed runs (--stream, or an input over --memory-budget)")
    if args.schedule == "static" and args.tiles is not None:
        raise ValueError("--tiles applies to --schedule dynamic")
    t0 = time.perf_counter()
    x, is_image, name, weight, groups = _load(args)
    if args.engine is None:  # filters in this process (OpenCV threads itself), layers on worker processes
        pool = args.schedule != "static" or args.weights is not None
        filt = backends.base.is_filter(_spec(args, x.shape, weight.shape, groups))
        args.engine = "threads" if filt and not pool else "processes"
    _pool_only(args)
    _warn_not_finite(x, name)
    plan = _plan(args, x.shape, weight, groups, args.workers)  # the values: backends that depend on them
    found = _targets(args, name, is_image, streamed=False, shape=plan.spec.output_shape)
    print(f"input: {name} {list(x.shape)} {x.dtype}  kernel: {args.kernel} {list(weight.shape)} groups={groups}"
          f"  (read in {time.perf_counter() - t0:.3f}s)")
    print(plan)
    _say_why_fewer(args, plan, x.itemsize, weight)
    print(f"backend {plan.backend}: {backends.get(plan.backend).guarantee}")
    if args.engine == "threads" and array_threads.runs(plan):  # numpy in and out: torch is not imported
        return _finish(args, array_threads.run(plan, x, weight), x, weight, found)
    import torch

    from haloconv import api
    from haloconv.engines import processes

    xt, wt = torch.from_numpy(x), torch.from_numpy(weight)
    if args.engine == "processes":
        ex = processes.run(plan, xt, wt, None, timeout=args.timeout, on_failure=args.on_failure,
                           log=lambda m: print(m, flush=True), schedule=args.schedule, tiles=args.tiles,
                           measure_speeds=args.weights == "auto")
        if ex.failures:
            print(f"survived {len(ex.failures)} worker fault(s); the result is from {ex.plan.workers} workers")
    else:
        ex = api.execute(plan, xt, wt, None, engine=args.engine)
    return _finish(args, ex, xt, wt, found)


def _stream_source(args: argparse.Namespace) -> arrays.DiskArray | None:
    """The input file to stream, when --stream is given or the input and output would not
    fit --memory-budget in memory; None for an in-memory run."""
    budget = _budget(args)
    streamable = args.input is not None and Path(args.input).suffix.lower() in (".npy", ".zarr", *TIFF_SUFFIXES)
    if not args.stream and (budget is None or not streamable):
        return None
    if not streamable:
        raise ValueError("--stream reads its input from a .npy, .tif/.tiff or .zarr file (not --random/--sample "
                         f"or {args.input!r})")
    source = arrays.open_input(args.input)
    itemsize = 8 if args.dtype == "float64" else 4
    in_memory = 2 * math.prod(source.logical_shape) * itemsize  # the input as floats, and an output as big
    return source if args.stream or in_memory > budget else None


def run_stream(args: argparse.Namespace, source: arrays.DiskArray) -> int:
    """Out of core: tiles sized by --memory-budget, read from and written to files."""
    from haloconv import outofcore

    for flag, bad in (("--verify", args.verify), ("--partition", args.partition != "auto"),
                      ("--weights", args.weights is not None), ("--exchange master", args.exchange == "master")):
        if bad:
            raise ValueError(f"{flag} does not apply to a streamed run (tiles are sized by --memory-budget and "
                             "pulled by whichever process is free; nothing is held whole in memory to verify)")
    budget = _budget(args)
    if budget is None:
        raise ValueError("--stream needs --memory-budget: the peak resident memory allowed to each process")
    shape = source.logical_shape
    weight, groups = filters.load_kernel(args.kernel, shape[1], len(shape) - 2)
    name = Path(args.input).name.split(".")[0]
    found = outputs.targets(args.output, outputs.default_stem(name, args.kernel), image=False,
                            image_format=args.image_format, streamed=True, stream_format=args.out_format)
    out = found[0].path
    if args.resume and out.exists() and not arrays.partial_path(out).exists():
        print(f"{out} is complete (no partial output to resume); nothing to do")
        return 0
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 checks the outputs and speaks
        outputs.prepare(found, args.output, overwrite=args.overwrite, mkdir=args.mkdir)
        print(f"input: {args.input} {list(shape)} {np.dtype(source.dtype)} ({source.kind}, "
              f"{source.nbytes / 2**20:.0f} MiB)  kernel: {args.kernel} {list(weight.shape)} groups={groups}  "
              f"backend: {args.backend or 'default (auto for filters, torch for layers)'}", flush=True)
    kw = dict(memory_budget=budget, stride=_int_list(args.stride, "--stride"), padding=_padding(args.padding),
              dilation=_int_list(args.dilation, "--dilation"), groups=groups, padding_mode=args.padding_mode,
              backend=args.backend, dtype=args.dtype, resume=args.resume, profile=args.profile)
    if _under_torchrun():  # every rank streams its share through the shared files
        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
        try:
            res = outofcore.conv_file(args.input, weight.astype(args.dtype), out, spmd=True, **kw)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        if res is None:  # not rank 0: rank 0 reports
            return 0
    else:
        res = outofcore.conv_file(args.input, weight.astype(args.dtype), out, workers=args.workers, engine=args.engine,
                            on_failure=args.on_failure, timeout=args.timeout, **kw)
    if res.failures:
        print(f"survived {len(res.failures)} worker fault(s); finished with {len(res.peak_rss)} processes")
    print(res.table())
    print(f"wrote {out} ({res.wall_seconds:.2f}s)")
    if args.report:
        rep = {"stream": True, "output": str(out), "backend": res.plan.backend,
               "engine": "torchrun" if _under_torchrun() else args.engine,
               "wall_seconds": res.wall_seconds, "budget": res.budget,
               "baseline": res.baseline, "tiles": len(res.plan.tiles), "skipped": res.skipped,
               "block": list(res.plan.tiles[0].out.shape), "failures": res.failures,
               "ranks": {str(r): {"tiles": res.tiles_done.get(r, 0), "bytes_read": res.bytes_read.get(r, 0),
                                  "peak_rss": res.peak_rss[r]} for r in res.peak_rss},
               "load": os.getloadavg()}
        _report(rep, args.report)
    return 0


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_spmd(args: argparse.Namespace) -> int:
    """Under torchrun: every rank runs this; rank 0 reads the input and writes the output."""
    import torch
    import torch.distributed as dist

    from haloconv import distributed as hd
    from haloconv.compute import kernels

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # a rank that dies or stalls makes the others fail after --timeout, not hang
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=args.timeout))
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        meta = [None]
        if rank == 0:
            x, is_image, name, weight, groups = _load(args)
            found = _targets(args, name, is_image, streamed=False)
            meta = [(x.shape, weight, groups, name, is_image)]
        dist.broadcast_object_list(meta, src=0)
        x_shape, weight, groups, name, is_image = meta[0]
        plan = _plan(args, x_shape, weight.shape, groups, world)
        wt = torch.from_numpy(weight).to(device)
        xt = torch.from_numpy(x).to(device) if rank == 0 else None
        if rank == 0:
            print(f"torchrun: {world} ranks, backend {dist.get_backend()}, device {device}")
            print(plan)
        t0 = time.perf_counter()
        y = hd.gather(hd.conv(hd.scatter(xt, plan), wt, None, plan=plan), plan)
        wall = time.perf_counter() - t0
        stats = [None] * world
        dist.gather_object(hd.traffic(), stats if rank == 0 else None, dst=0)
        status = 0
        if rank == 0:
            backend = backends.label(plan.backend, kernels.select_backend(plan.spec, xt, wt, None))
            ex = execution_from_reports(y, plan, "torchrun", backend, wall, dict(enumerate(stats)))
            status = _finish(args, ex, xt, wt, found)
        flag = [status]
        dist.broadcast_object_list(flag, src=0)
        return int(flag[0])
    finally:
        dist.destroy_process_group()


def _problem_shapes(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[int, ...], int, str]:
    """(x shape, weight shape, groups, name) without making data for --random."""
    if args.random:
        x_shape = _random_shape(args.random)
        name = f"random{'x'.join(map(str, x_shape))}"
    else:
        path = images.sample_path(args.sample) if args.sample else Path(args.input)
        x, _ = images.read_input(path)
        x_shape, name = x.shape, path.stem
    if args.weight_shape:
        w_shape = _random_shape(args.weight_shape) if args.weight_shape.count("x") >= 3 else None
        if w_shape is None or len(w_shape) != len(x_shape):
            raise ValueError(f"--weight-shape must be C_out x C_in/groups x kernel... matching the input, "
                             f"got {args.weight_shape!r}")
        return tuple(x_shape), tuple(w_shape), x_shape[1] // w_shape[1], name
    weight, groups = filters.load_kernel(args.kernel, x_shape[1], len(x_shape) - 2)
    return tuple(x_shape), tuple(weight.shape), groups, name


def plan_command(args: argparse.Namespace) -> int:
    from haloconv.cli import plots

    x_shape, w_shape, groups, name = _problem_shapes(args)
    spec = _spec(args, x_shape, w_shape, groups)
    prof = cost.load_profile(args.profile)
    workers = args.workers or default_workers()
    itemsize = 8 if args.dtype == "float64" else 4
    print(f"input {name} {list(x_shape)}, weight {list(w_shape)}, groups {groups}, {workers} workers, "
          f"engine {args.engine}; profile: {prof.source}")
    ranked = cost.candidates(spec, workers, prof, itemsize, backend=args.backend or backends.default_for(spec),
                             engine=args.engine,
                             memory_budget=_budget(args))
    if args.partition != "auto":
        chosen = _plan(args, x_shape, w_shape, groups, workers)
        ranked = [cost.predict(chosen, prof, itemsize, args.engine)] + [
            q for q in ranked if q.plan.splits != chosen.splits or q.plan.backend != chosen.backend]
    if not ranked:
        raise ValueError(f"no candidate fits --memory-budget {args.memory_budget}")
    print(report.candidates_table(ranked[: args.top]))
    best = ranked[0]
    print(f"\nchosen: {best.label}")
    print(best.plan)
    if args.png:
        print(f"wrote {plots.plan_png(best.plan, args.png)}")
    if args.simulate_workers:
        counts = _int_list(args.simulate_workers, "--simulate-workers")
        counts = (counts,) if isinstance(counts, int) else counts
        if any(c < 1 for c in counts):
            raise ValueError(f"--simulate-workers must be positive ints, got {args.simulate_workers!r}")
        sim = dataclasses.replace(prof, cores=max(counts))
        if args.bandwidth:
            sim.bandwidth_Bps = units.quantity(args.bandwidth, units.BYTES, "--bandwidth")
        if args.latency:
            sim.latency_s = units.quantity(args.latency, units.SECONDS, "--latency")
        proj = scaling.project(spec, counts, sim, itemsize)
        print(scaling.table(counts, proj))
        title = (f"{list(x_shape)} * {list(w_shape)}: predicted, {sim.bandwidth_Bps / 1e9:g} GB/s, "
                 f"{sim.latency_s * 1e6:g} us, one core per worker")
        if args.scaling_png:
            print(f"wrote {plots.scaling_png(counts, proj, args.scaling_png, title)}")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    import importlib.util

    from haloconv.cli import bench

    parts = set(args.only.split(","))
    if not parts or parts - {"accuracy", "peers", "scaling"}:
        raise ValueError(f"--only takes accuracy, peers, scaling (comma-separated), got {args.only!r}")
    if args.peers_size < 16:
        raise ValueError(f"--peers-size must be >= 16, got {args.peers_size}")
    accuracy = peer = scaled = None
    if "accuracy" in parts:
        accuracy = bench.model_accuracy(args.profile, repeat=2 if args.quick else 5, quick=args.quick,
                                          min_seconds=0.0 if args.quick else 0.3)
    if "peers" in parts:
        methods = [m for m in bench.PEERS if m != "dask-image" or importlib.util.find_spec("dask_image")]
        if "dask-image" not in methods:
            print("dask-image is not installed (pip install 'haloconv[bench]'): compared without it")
        peer = bench.peers(args.peers_size, (3, 15), 1 if args.quick else 3, methods)
    if "scaling" in parts:
        spec = ConvSpec.from_args((1, 64, 2048, 2048), (64, 64, 3, 3), None, padding=1)
        counts = [2**i for i in range(11)]
        sim = dataclasses.replace(cost.load_profile(args.profile), bandwidth_Bps=25e9, latency_s=5e-6, cores=1024)
        proj = scaling.project(spec, counts, sim)
        title = "1x64x2048x2048 * 64x64x3x3: predicted, 25 GB/s, 5 us, one core per worker"
        scaled = (counts, proj, title, scaling.table(counts, proj))
        print(scaled[3])
    for path in bench.write_folder(args.out, accuracy, peer, scaled):
        print(f"wrote {path}")
    return 0


def calibrate_command(args: argparse.Namespace) -> int:
    from haloconv.cli.calibrate import calibrate

    prof = calibrate(quick=args.quick)
    path = prof.save(args.profile or cost.default_profile_path())
    print(f"wrote {path}")
    return 0


class _ClosablePipe:
    """stdout that outlives its reader: once the pipe is closed (``haloconv run ... | head``),
    what is printed is dropped instead of raising BrokenPipeError, so the run goes on and
    writes its outputs."""

    def __init__(self, stream):
        self._stream, self._closed = stream, False

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def _gone(self) -> None:
        self._closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)  # the interpreter's last flush at exit goes nowhere
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    caller_stdout = sys.stdout
    sys.stdout = _ClosablePipe(caller_stdout)
    try:
        return _command(args)
    finally:
        sys.stdout = caller_stdout


def _command(args: argparse.Namespace) -> int:
    try:
        if args.command == "run":
            return run(args)
        if args.command == "plan":
            return plan_command(args)
        if args.command == "calibrate":
            return calibrate_command(args)
        if args.command == "bench":
            return bench_command(args)
    except (ValueError, TypeError) as e:
        print(f"haloconv: error: {e}", file=sys.stderr)
        return 2
    except WorkerError as e:
        print(f"haloconv: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("haloconv: interrupted", file=sys.stderr)
        return 130
    return 0  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
