"""`haloconv run` in memory: read the input whole, plan, run on threads, worker processes or
torchrun ranks, write the outputs, verify; the summary (or, with -v, the tables) says what
was decided and what it cost."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from haloconv import dispatch
from haloconv.compute import backends
from haloconv.files import images, named_kernels

from . import console as console_module
from . import options, outputs, report
from .console import Console

# torch (and the engines that use it) are imported by the paths that compute with it: a
# filter run on OpenCV in this process never imports it (docs/architecture.md, "Why filters
# run without torch")


TOP = 12  # candidates `-v` lists, as `haloconv plan` lists by default
FEWER_SLOWER_UP_TO = 10.0  # the best split over all workers is named when within this of the choice


@dataclass
class Problem:
    """What the command line asks to convolve: the input and its kernel."""

    x: np.ndarray
    picture: bool
    name: str
    how: str  # how the input was read, in words
    weight: np.ndarray
    groups: int
    preview: images.Preview  # how a PNG/JPEG output shows the values (--png-scale; the input's alpha)


def load(args: argparse.Namespace) -> Problem:
    if args.random:
        shape = options.random_shape(args.random)
        x = np.random.default_rng(args.seed).standard_normal(shape, dtype=np.float32)
        found = images.Input(x.astype(args.dtype, copy=False), False, f"random normal, seed {args.seed}")
        name = f"random{'x'.join(map(str, shape))}"
    else:
        path = images.sample_path(args.sample) if args.sample else Path(args.input)
        found = images.read_input(path, args.dtype, args.integers, args.layout)
        name = path.stem
    x = np.ascontiguousarray(found.x, dtype=np.dtype(args.dtype))
    weight, groups = named_kernels.load_kernel(args.kernel, x.shape[1], x.ndim - 2)
    return Problem(x, found.picture, name, found.how, weight.astype(x.dtype), groups,
                   images.preview_for(found, args.png_scale))


def input_line(name: str, shape, dtype, how: str, kernel: str, w_shape, groups: int) -> str:
    return (f"input: {name} {list(shape)} {np.dtype(dtype)} ({how})  kernel: {kernel} {list(w_shape)} "
            f"groups={groups}")


def _targets(args: argparse.Namespace, problem: Problem, shape: tuple[int, ...]) -> list[outputs.Target]:
    """The files this run writes (cli/outputs.py), refused before any compute if they exist
    (without --overwrite), their folder does not (without --mkdir) or cannot take them."""
    found = outputs.targets(args.output, outputs.default_stem(problem.name, args.kernel), image=problem.picture,
                            image_format=args.image_format, streamed=False, stream_format=args.out_format)
    outputs.prepare(found, args.output, overwrite=args.overwrite, mkdir=args.mkdir, shape=shape,
                    itemsize=problem.x.itemsize, preview=problem.preview)
    outputs.check_side_files(args)
    return found


def _finish(args, console: Console, ex, problem: Problem, w, found: list[outputs.Target]) -> int:
    """The run's tables (-v) and summary, the outputs, the report, --verify (rank 0 / master).
    The input is let go before the outputs are written, unless --verify compares with it: the
    page cache that takes the files then finds the memory it just gave back (on a virtual
    machine whose host takes free memory back, 10x faster than memory the host must find)."""
    console.detail(ex.table())
    x = problem.x
    rep = report.run_report(ex, x.itemsize)
    rep.update(report.header(args, problem.name, problem.how, list(x.shape), str(x.dtype),
                             list(problem.weight.shape), problem.groups))
    if not args.verify:
        problem.x = x = None
    if ex.engine != "threads":
        console.detail(report.traffic_table(rep))
    console.say(f"done in {ex.wall_seconds:.3f} s on {ex.engine}, compute {ex.backend}")
    y = ex.output if isinstance(ex.output, np.ndarray) else ex.output.cpu().numpy()
    notes = images.write_outputs(y, [(t.path, t.fmt) for t in found], problem.preview)
    for t, how in zip(found, notes):
        note = [how] if how else []
        if t.fmt in images.PICTURES and y.shape[1] not in (1, 3):
            note.append(f"channel 0 of {y.shape[1]}: a picture shows 1 or 3; the .npy holds them all")
        console.say(f"wrote {t.path}" + (f" ({'; '.join(note)})" if note else ""))
    rep["outputs"] = [str(t.path) for t in found]
    status = 0
    if args.verify:
        rep["verify"] = _verify(console, ex, x, w)
        status = 0 if rep["verify"]["ok"] else 1
        if status:
            console.error(f"verify: the result differs from the single-node {ex.plan.backend} call by "
                          f"{rep['verify']['max_abs_diff']:.3g}")
    if args.report:
        report.emit(rep, args.report, console)
    return status


def _verify(console: Console, ex, x, w) -> dict:
    """The single-node call of the run's backend on the whole input, compared NaN-aware."""
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
    console.say(f"verify: single-node {method} {t_ref:.4f}s vs haloconv {ex.wall_seconds:.4f}s; "
                f"max |diff| = {diff:.3g}; bitwise equal: {equal}")
    ok = equal
    b = backends.get(method)
    if not b.exact_for(ex.plan.spec):  # a transform's sizes differ per tile: compared within its stated tolerance
        tolerance = b.tolerance[out.dtype]
        ok = diff <= tolerance * ref.abs().nan_to_num(nan=0.0).max().item()
        console.say(f"verify: {method} within {tolerance:g} x max|y|: {ok}")
    return {"bitwise_equal": bool(equal), "max_abs_diff": diff, "single_node_seconds": t_ref,
            "backend": method, "ok": bool(ok)}


def _warn_not_finite(console: Console, x: np.ndarray, name: str) -> None:
    """A warning when the input holds NaN or Inf: every output whose kernel reaches one is
    NaN (or Inf) too, here as in the single-node call."""
    # all finite when the largest and smallest values are: NaN propagates through both, and an
    # infinity is the one or the other (two reductions, no array of flags; counted only then)
    if x.size == 0 or (np.isfinite(x.max()) and np.isfinite(x.min())):
        return
    nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    if nan or inf:
        console.warn(f"input {name} holds {nan} NaN and {inf} infinite values; the outputs whose kernels reach "
                     "them are not finite either (as in the single-node call)")


def _options_for(args: argparse.Namespace, spec, workers: int | None):
    """The planner's options for these arguments on ``workers`` workers (None: the
    planner's default), resolved, and the profile they price with."""
    from haloconv.planner import plans

    how = plans.resolved(spec, options.plan_options(args, workers))
    return how, plans.load(how.profile)


def _say_why_fewer(args: argparse.Namespace, console: Console, plan, itemsize: int, weight: np.ndarray) -> None:
    """When the cost model (--partition auto) runs on fewer workers than --workers asked
    for: one line with its choice, the best split over all of them, and how to force it."""
    if args.workers is None or args.partition != "auto" or plan.workers >= args.workers:
        return
    from haloconv.costmodel import cost
    from haloconv.planner import choice

    how, prof = _options_for(args, plan.spec, args.workers)
    chosen = cost.predict(plan, prof, itemsize, how.engine)
    line = (f"the cost model runs this on {plan.workers} of the {args.workers} workers asked for: "
            f"{chosen.label}, predicted {chosen.total_s:.3g} s")
    # the best split over all of them, looked for among those within FEWER_SLOWER_UP_TO of the
    # choice (on worker processes a split can be predicted thousands of times slower; finding
    # the least bad of those would simulate them all)
    full = choice.best(plan.spec, how, prof, itemsize, weight, 1, splits_only=True,
                       ceiling=FEWER_SLOWER_UP_TO * chosen.total_s)
    if full:
        full = full[0]
        line += (f"; the best split over all {args.workers}, {full.label}, is predicted {full.total_s:.3g} s "
                 f"({full.total_s / chosen.total_s:.2f}x): --partition {full.plan.partition} forces it")
    else:
        line += f"; every split over all {args.workers} is predicted over {FEWER_SLOWER_UP_TO:g}x slower"
    console.say(line)


def pool_only(args: argparse.Namespace) -> None:
    if args.engine != "processes" or options.under_torchrun():
        if args.schedule != "static" or args.worker_speeds == "auto":
            raise ValueError("--schedule dynamic and --worker-speeds auto run on the processes engine (not threads "
                             "or torchrun)")


def run(args: argparse.Namespace, console: Console) -> int:
    for flag, bad in (("--resume", args.resume), ("--sync", args.sync), ("--out-format", args.out_format != "npy")):
        if bad:
            raise ValueError(f"{flag} applies to streamed runs (--stream, or an input over --memory-budget)")
    if args.schedule == "static" and args.tiles is not None:
        raise ValueError("--tiles applies to --schedule dynamic")
    t0 = time.perf_counter()
    problem = load(args)
    x, weight = problem.x, problem.weight
    args.engine = options.default_engine(args, options.spec(args, x.shape, weight.shape, problem.groups))
    pool_only(args)
    _warn_not_finite(console, x, problem.name)
    plan = options.plan(args, x.shape, weight, problem.groups, args.workers)  # values: backends depend on them
    found = _targets(args, problem, plan.spec.output_shape)
    console.say(input_line(problem.name, x.shape, x.dtype, problem.how, args.kernel, weight.shape, problem.groups))
    console.detail(f"(read in {time.perf_counter() - t0:.3f}s)")
    console.detail(str(plan))
    console.say(f"plan: {plan.summary()}, engine {args.engine}")
    if console.verbosity > console_module.NORMAL and args.partition == "auto":  # the prices the choice saw
        from haloconv.planner import choice

        how, prof = _options_for(args, plan.spec, args.workers)
        console.detail(report.quotes_table(choice.best(plan.spec, how, prof, x.itemsize, weight, TOP)))
    _say_why_fewer(args, console, plan, x.itemsize, weight)
    console.say(f"backend {plan.backend}: {backends.get(plan.backend).guarantee}")
    with console.tracker() as progress:
        ex = dispatch.run(plan, x, weight, None, options.run_options(args, args.engine, progress))
    if ex.failures:
        console.say(f"survived {len(ex.failures)} worker fault(s); finished on {len(ex.workers)} worker processes")
    del x  # problem holds it, for _finish to let go
    return _finish(args, console, ex, problem, weight, found)


def run_spmd(args: argparse.Namespace, console: Console) -> int:
    """Under torchrun: every rank runs this; rank 0 reads the input and writes the output."""
    import torch
    import torch.distributed as dist

    pool_only(args)
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
            problem = load(args)
            found = _targets(args, problem, problem.x.shape)
            meta = [(problem.x.shape, problem.weight, problem.groups)]
        dist.broadcast_object_list(meta, src=0)
        x_shape, weight, groups = meta[0]
        plan = options.plan(args, x_shape, weight.shape, groups, world)
        if rank == 0:
            console.say(input_line(problem.name, x_shape, problem.x.dtype, problem.how, args.kernel, weight.shape,
                                   groups))
            console.say(f"torchrun: {world} ranks, backend {dist.get_backend()}, device {device}")
            console.detail(str(plan))
            console.say(f"plan: {plan.summary()}, engine torchrun")
        ex = dispatch.run(plan, problem.x if rank == 0 else None, weight, None,
                          options.run_options(args, "torchrun"))
        status = _finish(args, console, ex, problem, weight, found) if rank == 0 else 0
        flag = [status]
        dist.broadcast_object_list(flag, src=0)
        return int(flag[0])
    finally:
        dist.destroy_process_group()
