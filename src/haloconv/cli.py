"""`haloconv` command line: `haloconv run` convolves an image or array across workers."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from haloconv import api, filters, io, kernels, report
from haloconv.engines import LocalCluster
from haloconv.engines.base import execution_from_reports


def _int_list(text: str, name: str) -> int | tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{name} must be an int or comma-separated ints, got {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def _padding(text: str) -> int | tuple[int, ...] | str:
    return text if text in ("same", "valid") else _int_list(text, "--padding")


def _partition(text: str) -> str | tuple[int, ...]:
    if "," in text or text.isdigit():
        return tuple(_int_list(text, "--partition") if "," in text else (int(text),))
    return text


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="haloconv", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="convolve an image/array across workers and report the plan")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("input", nargs="?", help="PNG/JPEG/TIFF image or .npy array")
    src.add_argument("--random", metavar="HxW", help="random input instead of a file (HxW, CxHxW, NxCxHxW)")
    src.add_argument("--sample", choices=sorted(io.SAMPLES), help="a sample image shipped with matplotlib")
    r.add_argument("--kernel", default="sobel-x",
                   help=f"filter name ({', '.join(filters.NAMES)}) or a .npy weight (default sobel-x)")
    r.add_argument("--workers", type=int, default=None, help="number of workers (default: cores)")
    r.add_argument("--partition", default="auto",
                   help="auto, batch, rows|horizontal, cols|vertical, depth, grid, channels, "
                        "or split counts over N,C_out,*spatial e.g. 1,1,2,2")
    r.add_argument("--weights", default=None, help="relative worker speeds, comma-separated")
    r.add_argument("--stride", default="1")
    r.add_argument("--padding", default="same", help="int, ints, 'same' or 'valid' (default same)")
    r.add_argument("--dilation", default="1")
    r.add_argument("--padding-mode", default="zeros", help="zeros, reflect, replicate, circular")
    r.add_argument("--engine", default="processes", choices=("processes", "threads"),
                   help="processes (default): worker processes in a gloo group; threads: in this process. "
                        "Under torchrun every rank runs its own share (SPMD)")
    r.add_argument("--exchange", default="neighbours", choices=("neighbours", "master"),
                   help="halos swapped between neighbours (default), or whole windows sent by the master")
    r.add_argument("--timeout", type=float, default=60.0, help="seconds before a silent worker is an error")
    r.add_argument("--report", default=None, metavar="RUN.json",
                   help="write per worker and phase: bytes, messages, seconds, predicted bytes, the plan, load")
    r.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    r.add_argument("--seed", type=int, default=0, help="seed for --random")
    r.add_argument("-o", "--output", default=None,
                   help="output prefix: writes PREFIX.npy (+ PREFIX.png/.tif for images); default out/<input>-<kernel>")
    r.add_argument("--image-format", choices=("png", "tif"), default="png")
    r.add_argument("--verify", action="store_true", help="also run the single-node torch call and compare")
    return p


def _load(args: argparse.Namespace) -> tuple[np.ndarray, bool, str, np.ndarray, int]:
    """(x, is_image, name, weight, groups) from the command line."""
    if args.random:
        shape = _random_shape(args.random)
        gen = np.random.default_rng(args.seed)
        x = gen.standard_normal(shape, dtype=np.float32)
        name, is_image = f"random{'x'.join(map(str, shape))}", False
    else:
        path = io.sample_path(args.sample) if args.sample else Path(args.input)
        x, is_image = io.read_input(path)
        name = path.stem
    x = np.ascontiguousarray(x, dtype=np.dtype(args.dtype))
    weight, groups = filters.load_kernel(args.kernel, x.shape[1], x.ndim - 2)
    return x, is_image, name, weight.astype(x.dtype), groups


def _plan(args: argparse.Namespace, x_shape, w_shape, groups: int, workers: int | None):
    weights = None if args.weights is None else [float(v) for v in args.weights.split(",")]
    return api.plan(
        x_shape, w_shape, None,
        stride=_int_list(args.stride, "--stride"), padding=_padding(args.padding),
        dilation=_int_list(args.dilation, "--dilation"), groups=groups,
        padding_mode=args.padding_mode, partition=_partition(args.partition),
        workers=workers, worker_weights=weights, exchange=args.exchange,
    )


def _finish(args, ex, x, w, name, is_image) -> int:
    """Print the run's tables, write the outputs and the report, verify (rank 0 / master)."""
    print(ex.table())
    rep = report.run_report(ex, x.element_size())
    if ex.engine != "threads":
        print(report.traffic_table(rep))
    y = ex.output.cpu().numpy()
    safe = args.kernel.replace(":", "").replace("/", "_").replace(".npy", "")
    prefix = args.output or os.path.join("out", f"{name}-{Path(safe).name}")
    for path in io.write_outputs(y, prefix, is_image, args.image_format):
        print(f"wrote {path}")
    status = 0
    if args.verify:
        t1 = time.perf_counter()
        ref = kernels.single_node(x, w, None, ex.plan.spec)
        t_ref = time.perf_counter() - t1
        equal = torch.equal(ex.output, ref)
        diff = (ex.output - ref).abs().nan_to_num(nan=float("inf")).max().item() if not equal else 0.0
        print(f"verify: single-node torch {t_ref:.4f}s vs haloconv {ex.wall_seconds:.4f}s; "
              f"max |diff| = {diff:.3g}; bitwise equal: {equal}")
        rep["verify"] = {"bitwise_equal": bool(equal), "max_abs_diff": diff, "single_node_seconds": t_ref}
        status = 0 if equal else 1
    if args.report:
        print(f"wrote {report.write_report(rep, args.report)}")
    return status


def run(args: argparse.Namespace) -> int:
    if _under_torchrun():
        return run_spmd(args)
    t0 = time.perf_counter()
    x, is_image, name, weight, groups = _load(args)
    plan = _plan(args, x.shape, weight.shape, groups, args.workers)
    print(f"input: {name} {list(x.shape)} {x.dtype}  kernel: {args.kernel} {list(weight.shape)} groups={groups}"
          f"  (read in {time.perf_counter() - t0:.3f}s)")
    print(plan)
    xt, wt = torch.from_numpy(x), torch.from_numpy(weight)
    if args.engine == "processes":
        with LocalCluster(plan.workers, timeout=args.timeout) as cluster:
            print(f"started {plan.workers} worker processes in {cluster.startup_seconds:.2f}s")
            ex = api.execute(plan, xt, wt, None, engine=cluster)
    else:
        ex = api.execute(plan, xt, wt, None, engine=args.engine)
    return _finish(args, ex, xt, wt, name, is_image)


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_spmd(args: argparse.Namespace) -> int:
    """Under torchrun: every rank runs this; rank 0 reads the input and writes the output."""
    import torch.distributed as dist

    from haloconv import distributed as hd

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
            backend = kernels.backend_name(kernels.select_backend(plan.spec, xt, wt, None))
            ex = execution_from_reports(y, plan, "torchrun", backend, wall, dict(enumerate(stats)))
            status = _finish(args, ex, xt, wt, name, is_image)
        flag = [status]
        dist.broadcast_object_list(flag, src=0)
        return int(flag[0])
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run(args)
    except (ValueError, TypeError) as e:
        print(f"haloconv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("haloconv: interrupted", file=sys.stderr)
        return 130
    return 0  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
