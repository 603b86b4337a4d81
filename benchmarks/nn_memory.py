"""Per-rank activation memory of a sharded conv stack (training), on 1, 2 and 4 ranks.

    .venv/bin/python benchmarks/nn_memory.py [--size 2048] [--channels 16] [--layers 3] [--ranks 1,2,4]
        [--ndim 2|3] [--partition rows]

Model: ``layers`` x (Conv C->C 3x3(x3) padding 1 + ReLU) on a 1 x C x S x S (x S) float32
input, ``partition`` (default: rows in 2-D, depth in 3-D), one forward + backward per rank
count (launched with torchrun).  E.g. issue 18's 3-D case: --ndim 3 --size 256 --channels 4.
Per rank:
  activation MB  bytes of the tensors autograd keeps for backward (unique storages, at the
                 end of the forward, when they peak), measured with saved_tensors_hooks;
  RSS peak MB    the process's peak resident memory during forward+backward above its
                 resident memory before it (includes transient buffers and the gradients).
Target (issue): activation memory per rank <= (single-rank / P + the halo pieces the rank
received) x 1.10.  Plain torch on one process is shown for reference.  Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _model(c: int, layers: int, ndim: int = 2) -> nn.Module:
    mods = []
    for _ in range(layers):
        mods += [(nn.Conv2d if ndim == 2 else nn.Conv3d)(c, c, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*mods)


def measure(model: nn.Module, x: torch.Tensor, loss_of) -> dict:
    """Saved-activation bytes at the end of the forward, and the RSS peak of forward+backward."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        saved[s.data_ptr()] = s.nbytes()
        return t

    base = _rss_mb()
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    act = sum(saved.values()) / 2**20
    loss_of(y).backward()
    return {"activation_mb": act, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base,
            "seconds": time.perf_counter() - t0}


def rank_main(args) -> None:
    import haloconv.nn as hnn

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    shape = (1, args.channels, *(args.size,) * args.ndim)
    model = hnn.parallelize(_model(args.channels, args.layers, args.ndim), partition=args.partition)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)[hnn.local_box(shape, args.partition)].clone()  # this rank's box only
    r = measure(model, x, lambda y: hnn.sum_shards(y.sum()))
    # what a conv keeps beyond its shard: the halo pieces it received
    plans = [m.layout.plan(m.spec_for(shape)) for m in model if isinstance(m, (hnn.DistributedConv2d,
                                                                             hnn.DistributedConv3d))]
    r["halo_mb"] = sum(p.tile_of(rank).halo_elements for p in plans) * 4 / 2**20
    out = [None] * world
    dist.all_gather_object(out, r)
    if rank == 0:
        print("RESULT " + json.dumps(out))
    dist.barrier()  # leave together: a rank tearing gloo down while a peer still works can abort at exit
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--ndim", type=int, choices=(2, 3), default=2)
    ap.add_argument("--partition", default=None)
    ap.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.partition = args.partition or ("rows" if args.ndim == 2 else "depth")
    if args.rank_main:
        return rank_main(args)
    torch.manual_seed(0)
    shape = (1, args.channels, *(args.size,) * args.ndim)
    plain = measure(_model(args.channels, args.layers, args.ndim), torch.randn(shape), lambda y: y.sum())
    print(f"{' x '.join(map(str, shape))} float32, {args.layers} x (conv 3{'x3' * (args.ndim - 1)} + ReLU), "
          f"{args.partition}, load average {os.getloadavg()}")
    print(f"plain torch, 1 process: activation {plain['activation_mb']:.1f} MB, "
          f"RSS peak +{plain['rss_peak_mb']:.0f} MB")
    head = f"{'ranks':>5}  {'activation MB/rank (max)':>24}  {'x P / single':>12}  {'target MB':>9}  " \
           f"{'ratio to target':>15}  {'RSS peak MB/rank (max)':>22}  {'s':>5}  load"
    print(head)
    single = None
    for p in [int(v) for v in args.ranks.split(",")]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={p}", __file__,
               "--rank-main", "--size", str(args.size), "--channels", str(args.channels), "--layers", str(args.layers),
               "--ndim", str(args.ndim), "--partition", args.partition]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if r.returncode or line is None:
            raise SystemExit(f"{p} ranks failed:\n{r.stderr[-4000:]}")
        res = json.loads(line[7:])
        act = max(v["activation_mb"] for v in res)
        if single is None and p == 1:
            single = act
        base = single if single is not None else act * p
        target = max((base / p + v["halo_mb"]) * 1.10 for v in res)
        print(f"{p:>5}  {act:>24.1f}  {act * p / base:>12.3f}  {target:>9.1f}  {act / target:>15.2f}  "
              f"{max(v['rss_peak_mb'] for v in res):>22.0f}  {max(v['seconds'] for v in res):>5.1f}  "
              f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
