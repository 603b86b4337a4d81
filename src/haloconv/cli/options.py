"""The command line's options: the parser of every command, and the values its text
stands for (sizes, int lists, partitions, worker speeds, the plan they describe)."""

from __future__ import annotations

import argparse
import os
import sys

from haloconv import planner, units
from haloconv.compute import backends
from haloconv.files import arrays, images, named_kernels
from haloconv.files.pixels import INTEGERS
from haloconv.options import SCHEDULES, PlanOptions, RunOptions
from haloconv.tiling.partition import Partition
from haloconv.tiling.spec import ConvSpec

from .console import PROGRESS


def int_list(text: str, name: str) -> int | tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{name} must be an int or comma-separated ints, got {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def padding(text: str) -> int | tuple[int, ...] | str:
    return text if text in ("same", "valid") else int_list(text, "--padding")


def partition(text: str) -> Partition:
    """--partition: a name, or split counts 'N,C,H,W' (tiling.partition.Partition)."""
    if "," in text or text.isdigit():
        return Partition.of(tuple(int_list(text, "--partition") if "," in text else (int(text),)))
    return Partition.of(text)


def random_shape(text: str) -> tuple[int, ...]:
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


def budget(args: argparse.Namespace) -> int | None:
    return None if args.memory_budget is None else units.byte_count(args.memory_budget, "--memory-budget")


def worker_speeds(args: argparse.Namespace) -> list[float] | None:
    if args.worker_speeds is None or args.worker_speeds == "auto":
        return None
    try:
        return [float(v) for v in args.worker_speeds.split(",")]
    except ValueError:
        raise ValueError(f"--worker-speeds must be comma-separated numbers or 'auto', got {args.worker_speeds!r}"
                         ) from None


def spec(args: argparse.Namespace, x_shape, w_shape, groups: int) -> ConvSpec:
    return ConvSpec.from_args(x_shape, w_shape, None, stride=int_list(args.stride, "--stride"),
                              padding=padding(args.padding), dilation=int_list(args.dilation, "--dilation"),
                              groups=groups, padding_mode=args.padding_mode)


def plan_options(args: argparse.Namespace, workers: int | None) -> PlanOptions:
    """What the options ask of the planner (run and plan read them alike), with ``workers``
    (--workers, or a torchrun job's ranks) and the engine (default_engine) already decided."""
    return PlanOptions.of(partition=partition(args.partition), workers=workers, worker_weights=worker_speeds(args),
                          exchange=getattr(args, "exchange", "neighbours"), backend=args.backend,
                          memory_budget=budget(args), profile=args.profile,
                          engine=getattr(args, "engine", None) or "processes")


def run_options(args: argparse.Namespace, engine: str, progress=None) -> RunOptions:
    """What the options ask of the engine: ``engine`` ('threads', 'processes' or
    'torchrun'), what a lost worker does, the schedule, the silence limit, whether the
    workers' speeds are measured first, and the console's progress callback."""
    pool = engine == "processes"
    return RunOptions.of(engine=engine, on_failure=args.on_failure, schedule=args.schedule if pool else "static",
                         tiles=args.tiles if pool else None, timeout=args.timeout,
                         measure_speeds=pool and args.worker_speeds == "auto", progress=progress)


def plan(args: argparse.Namespace, x_shape, w_shape, groups: int, workers: int | None):
    """The Plan the options describe, for an input of ``x_shape`` and a filter (an array,
    or a shape) with ``groups``."""
    values = w_shape if hasattr(w_shape, "shape") else None
    w = tuple(values.shape) if values is not None else tuple(w_shape)
    return planner.plan_for(spec(args, x_shape, w, groups), plan_options(args, workers), values)


def default_engine(args: argparse.Namespace, spec: ConvSpec) -> str:
    """The engine `haloconv run` (and `haloconv plan`, which says what run will do) uses when
    --engine is not given: a filter in this process (OpenCV threads itself), unless options
    only a pool has ask for one; a layer that mixes channels on worker processes."""
    if getattr(args, "engine", None) is not None:
        return args.engine
    pool = getattr(args, "schedule", "static") != "static" or getattr(args, "worker_speeds", None) is not None
    return "threads" if backends.base.is_filter(spec) and not pool else "processes"


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "default" not in text and action.default not in (None, False)
                and action.default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class _Deprecated(argparse.Action):
    """An old spelling: works, and says which to use."""

    def __init__(self, *a, instead: str, **kw):
        self.instead = instead
        super().__init__(*a, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"haloconv: warning: {option_string} is deprecated; use {self.instead}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """What every command says: -q, -v, --progress."""
    g = p.add_argument_group("output")
    loud = g.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="count", default=0,
                      help="more detail: -v the plan, per-worker tables and the library's log; -vv debug "
                           "(default: a short summary)")
    loud.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    g.add_argument("--progress", choices=PROGRESS, default="auto",
                   help="auto: a bar on a terminal, a line per tenth of the tiles elsewhere, once a run takes 2 s; "
                        "lines: from the first tile on; bar; none")


def _add_problem_args(r: argparse.ArgumentParser) -> None:
    """The input, the kernel, the conv arguments and the partition (run and plan)."""
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("input", nargs="?", help="PNG/JPEG/TIFF image, .npy array or .zarr folder")
    src.add_argument("--random", metavar="HxW", help="random input instead of a file (HxW, CxHxW, NxCxHxW)")
    src.add_argument("--sample", choices=sorted(images.SAMPLES), help="a sample image shipped with matplotlib")
    r.add_argument("--kernel", default="sobel-x",
                   help=f"filter name ({', '.join(named_kernels.NAMES)}) or a .npy weight")
    r.add_argument("--integers", choices=INTEGERS, default="auto",
                   help="integer inputs become floats: unit: divided by the dtype's maximum, to [0, 1]; keep: their "
                        "values; auto: unit for pictures (PNG, JPEG, TIFF), keep for arrays (.npy, .zarr)")
    r.add_argument("--layout", choices=arrays.LAYOUTS, default="auto",
                   help="a 3-D array's axes: chw, hwc (channels last), dhw (a volume, one channel); auto: hwc when "
                        "the last axis has at most 4 entries and the first more, else chw")
    r.add_argument("--workers", type=int, default=None,
                   help="number of workers (default: the cores); a streamed run on threads: the cores its compute "
                        "uses")
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
                   help="the peak resident memory each process may hold, Python and its libraries included, "
                        "e.g. 2GB or 500MB: a run that would exceed it in memory is streamed (a .npy, .tif or "
                        ".zarr input; each process's peak RSS stays under it) or refused with what it needs; "
                        "partition=auto keeps each worker's data under it (default: no limit)")
    r.add_argument("--worker-speeds", default=None, metavar="SPEEDS",
                   help="relative worker speeds, comma-separated, or 'auto': measured by the processes first "
                        "(default: equal)")
    r.add_argument("--weights", dest="worker_speeds", action=_Deprecated, instead="--worker-speeds",
                   help="deprecated spelling of --worker-speeds")
    r.add_argument("--stride", default="1", help="int, or one int per spatial dim, comma-separated")
    r.add_argument("--padding", default="same", help="int, ints, 'same' or 'valid'")
    r.add_argument("--dilation", default="1", help="int, or one int per spatial dim, comma-separated")
    r.add_argument("--padding-mode", default="zeros", type=_padding_mode,
                   help="zeros, reflect, replicate, circular or symmetric, or a number (padding of that value); "
                        "scipy.ndimage calls them constant, mirror, nearest, wrap and reflect (scipy's 'reflect' "
                        "repeats the edge pixel, torch's does not)")
    r.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="the compute's float type")
    r.add_argument("--seed", type=int, default=0, help="seed for --random")


def _padding_mode(text: str) -> str | float:
    """--padding-mode: a mode's name, or a number (constant padding of that value)."""
    try:
        return float(text)
    except ValueError:
        return text


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    from haloconv import __version__

    p = argparse.ArgumentParser(prog="haloconv", description=description, formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"haloconv {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="convolve an image/array across workers", formatter_class=_Help)
    _add_problem_args(r)
    r.add_argument("--engine", default=None, choices=("processes", "threads"),
                   help="processes: worker processes in a gloo group; threads: in this process (default: threads "
                        "for filters and streamed runs, processes for layers that mix channels). Under torchrun "
                        "every rank runs its own share (SPMD)")
    r.add_argument("--exchange", default="neighbours", choices=("neighbours", "master"),
                   help="halos swapped between neighbours, or whole windows sent by the master")
    r.add_argument("--timeout", type=float, default=60.0, help="seconds before a silent worker is an error")
    r.add_argument("--on-failure", default="retry", choices=("retry", "fail"),
                   help="a worker dies mid-run: go on with the workers left, or stop")
    r.add_argument("--schedule", default="static", choices=SCHEDULES,
                   help="static: one tile per worker; dynamic: --tiles tiles pulled by whichever process is free "
                        "(unequal workers; a lost worker's unfinished tiles go to the others)")
    r.add_argument("--tiles", type=int, default=None, help="tiles of a dynamic schedule (default: 4 per worker)")
    r.add_argument("--report", default=None, metavar="RUN.json",
                   help="write the run's report (version, command, input, kernel, plan, per worker and phase: "
                        "bytes, messages, seconds, predicted bytes; outputs) as JSON; '-': to stdout "
                        "(default: none)")
    r.add_argument("-o", "--output", default=None,
                   help="the output file, its suffix picking the format (.npy, .tif/.tiff, .png, .jpg/.jpeg, .zarr: "
                        "exactly that file is written; another format's suffix is refused); a name without one "
                        "is a prefix: PREFIX.npy (+ PREFIX.png/.tif for an image input; PREFIX.<--out-format> "
                        "streamed); a folder holds <input>-<kernel> files (default: out/<input>-<kernel>)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace outputs that exist: regular files, and .zarr stores haloconv wrote (never a folder, "
                        "device or FIFO); a streamed run starts over instead of resuming (default: refuse)")
    r.add_argument("--mkdir", action="store_true", help="create the folder -o names if it is missing (default: refuse)")
    r.add_argument("--image-format", choices=("png", "tif", "jpeg"), default="png",
                   help="the picture written beside PREFIX.npy for an image input")
    r.add_argument("--png-scale", choices=("auto", "clip", "minmax"), default="auto",
                   help="how a PNG/JPEG output shows the values: clip to the input picture's range (as OpenCV "
                        "saturates) or scale the output's min..max to 0..255; auto: clip for a picture or integer "
                        "input, minmax for floats")
    r.add_argument("--stream", action="store_true",
                   help="out of core: tiles read from the input file and written into the output file, in this "
                        "process (--engine threads, the default) or by worker processes (--engine processes); "
                        "automatic when the input and output do not fit --memory-budget")
    r.add_argument("--dask", metavar="local:N|ADDRESS",
                   help="run on a dask.distributed cluster: N worker processes started for the run (local:N) or the "
                        "scheduler at ADDRESS (tcp://host:8786); the input file (.npy, .tif, .zarr) is read chunk by "
                        "chunk, the output written as a .zarr chunk by chunk: memory per worker bounded by the chunks "
                        "(default: no Dask; this process, or --engine's workers)")
    r.add_argument("--out-format", choices=arrays.FORMATS, default="npy",
                   help="streamed output: PREFIX.npy, PREFIX.tif or PREFIX.zarr")
    r.add_argument("--resume", action="store_true",
                   help="streamed runs: go on from the journal of an interrupted run (finished tiles are kept)")
    r.add_argument("--sync", action="store_true",
                   help="streamed runs: every finished tile on disk (fdatasync) before it is journaled, and the output "
                        "before it is renamed: --resume then survives a power loss too (default: a tile is journaled "
                        "once the system has it, as fast as the page cache; a journal from before a restart is "
                        "not trusted)")
    r.add_argument("--verify", action="store_true",
                   help="also run the single-node call of the backend and compare (fft: within its tolerance)")
    _add_output_args(r)
    pl = sub.add_parser("plan", help="rank the candidate partitions by predicted cost; draw the chosen one",
                        formatter_class=_Help)
    _add_problem_args(pl)
    pl.add_argument("--weight-shape", default=None, metavar="COxCIxKHxKW",
                    help="a layer's weight shape instead of --kernel (e.g. 64x64x3x3; default: the --kernel's)")
    pl.add_argument("--engine", default=None, choices=("processes", "threads"),
                    help="the engine whose costs rank the candidates (default: the one `haloconv run` picks with "
                         "these arguments: threads for filters, processes for layers that mix channels)")
    pl.add_argument("--top", type=int, default=12, help="candidates to print")
    pl.add_argument("--png", default=None, metavar="PLAN.png",
                    help="draw the chosen partition into this file (default: no picture)")
    pl.add_argument("--simulate-workers", default=None, metavar="1,2,4,...",
                    help="project strong/weak scaling over these worker counts (default: no projection)")
    pl.add_argument("--bandwidth", default=None,
                    help="link bandwidth for the projection, e.g. 25GB/s (default: the profile's)")
    pl.add_argument("--latency", default=None, help="message latency for the projection, e.g. 5us (default: the "
                                                    "profile's)")
    pl.add_argument("--scaling-png", default=None, metavar="SCALING.png",
                    help="plot the projection into this file (default: no plot)")
    _add_output_args(pl)
    b = sub.add_parser("bench", help="run the benchmarks; write markdown tables and PNG plots into a folder",
                       formatter_class=_Help)
    b.add_argument("--out", default="bench", help="folder")
    b.add_argument("--only", default="accuracy,peers,scaling",
                   help="which: accuracy (cost model vs measured), peers (vs OpenCV/scipy/dask-image/torch), scaling")
    b.add_argument("--quick", action="store_true", help="8 model configurations, 2 runs each; peers once")
    b.add_argument("--peers-size", type=int, default=8192, help="image side for the peer benchmark")
    b.add_argument("--profile", default=None, metavar="PROFILE.json",
                   help="cost-model profile (default: the one `haloconv calibrate` wrote)")
    _add_output_args(b)
    c = sub.add_parser("calibrate", help="measure this machine into a cost-model profile (JSON)",
                       formatter_class=_Help)
    c.add_argument("--profile", default=None, metavar="PATH",
                   help="where to write it (default: the user's cache dir, which the cost model reads)")
    c.add_argument("--quick", action="store_true", help="fewer, smaller measurements (seconds)")
    _add_output_args(c)
    return p
