"""`haloconv` command line: `haloconv run` convolves an image or array across workers."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from haloconv import api, filters, io, kernels


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
    r.add_argument("--engine", default="threads")
    r.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    r.add_argument("--seed", type=int, default=0, help="seed for --random")
    r.add_argument("-o", "--output", default=None,
                   help="output prefix: writes PREFIX.npy (+ PREFIX.png/.tif for images); default out/<input>-<kernel>")
    r.add_argument("--image-format", choices=("png", "tif"), default="png")
    r.add_argument("--verify", action="store_true", help="also run the single-node torch call and compare")
    return p


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
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
    weight = weight.astype(x.dtype)
    weights = None if args.weights is None else [float(v) for v in args.weights.split(",")]
    plan = api.plan(
        x.shape, weight.shape, None,
        stride=_int_list(args.stride, "--stride"), padding=_padding(args.padding),
        dilation=_int_list(args.dilation, "--dilation"), groups=groups,
        padding_mode=args.padding_mode, partition=_partition(args.partition),
        workers=args.workers, worker_weights=weights,
    )
    t_read = time.perf_counter() - t0
    print(f"input: {name} {list(x.shape)} {x.dtype}  kernel: {args.kernel} {list(weight.shape)} groups={groups}"
          f"  (read in {t_read:.3f}s)")
    print(plan)
    xt, wt = torch.from_numpy(x), torch.from_numpy(weight)
    ex = api.execute(plan, xt, wt, None, engine=args.engine)
    print(ex.table())
    y = ex.output.numpy()
    safe = args.kernel.replace(":", "").replace("/", "_").replace(".npy", "")
    prefix = args.output or os.path.join("out", f"{name}-{Path(safe).name}")
    for path in io.write_outputs(y, prefix, is_image, args.image_format):
        print(f"wrote {path}")
    status = 0
    if args.verify:
        t1 = time.perf_counter()
        ref = kernels.single_node(xt, wt, None, plan.spec)
        t_ref = time.perf_counter() - t1
        equal = torch.equal(ex.output, ref)
        diff = (ex.output - ref).abs().nan_to_num(nan=float("inf")).max().item() if not equal else 0.0
        print(f"verify: single-node torch {t_ref:.4f}s vs haloconv {ex.wall_seconds:.4f}s; "
              f"max |diff| = {diff:.3g}; bitwise equal: {equal}")
        status = 0 if equal else 1
    return status


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
