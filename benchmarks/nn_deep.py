"""Deep halos on a strong-scaling case: one training step per halo depth, at a network's
latency stood in for on one machine, beside what the cost model predicts and picks.

    .venv/bin/python benchmarks/nn_deep.py [--size 128] [--channels 16] [--layers 8]
        [--ranks 4] [--latency 1ms] [--depths 1,2,4,8] [--repeat 5]

Model: ``layers`` x (Conv2d C->C 3x3 padding 1 + ReLU) on a 1 x C x S x S float32 input,
rows over ``ranks`` ranks (torchrun, gloo), one thread each; one step = forward, a sum loss,
backward (the filters' gradients summed in one all-reduce).  $HALOCONV_LINK makes every
message leave ``latency`` after it is posted.  Per depth (parallelize(halo_depth=d)), the
best of ``repeat`` steps after a warm-up; and depth 1 with its halo messages skipped (the
floor), whose gap to depth 1 is the blocking halo's share of the step.  Printed: seconds,
speed-up over depth 1, the cost model's predicted seconds per depth and the depth
'auto' picks, with the load average.  Issue 18's targets: halo share >= 40% at depth 1; the
best depth >= 1.3x faster than depth 1; the picked depth within 10% of the best measured.
Timings share this machine with other work: compare the ratios.  Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _worker(args) -> None:
    import nn_steps
    import torch
    import torch.distributed as dist

    import haloconv.nn as hnn
    from haloconv.engines.spmd import comm as comm_module
    from haloconv.nn import deep

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    os.environ[comm_module.LINK_ENV] = args.latency if args.latency not in ("0", "0s") else ""
    torch.manual_seed(0)
    model = hnn.parallelize(nn_steps.conv_stack(args.channels, args.layers), partition="rows", overlap=False)
    shape = (1, args.channels, args.size, args.size)
    x = hnn.shard(torch.randn(shape), "rows")

    def step() -> float:
        return nn_steps.train_step(model, x)

    depths = [int(d) for d in args.depths.split(",")]
    measured = {}
    for name, depth in [("floor", 1)] + [(str(d), d) for d in depths]:
        model.halo_depth = depth
        nn_steps.skip_halos(name == "floor")
        step()  # warm-up
        measured[name] = min(step() for _ in range(args.repeat))
    nn_steps.skip_halos(False)
    predicted = deep.predict_depths(list(model), shape, world, 4)
    model.halo_depth = "auto"
    with torch.no_grad():
        model(x)
    picked = next(iter(model._auto_depth.values()))
    if rank == 0:
        print("RESULT " + json.dumps({"measured": measured, "predicted": predicted, "picked": picked}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--latency", default="1ms")
    ap.add_argument("--depths", default="1,2,4,8")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.ranks}",
           __file__, "--worker", *sys.argv[1:]]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        sys.exit(r.stderr[-3000:])
    res = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    m, pred, picked = res["measured"], {int(k): v for k, v in res["predicted"].items()}, res["picked"]
    one = m["1"]
    print(f"{args.layers} x (conv {args.channels}->{args.channels} 3x3 + ReLU), 1x{args.channels}x{args.size}^2, "
          f"rows over {args.ranks} ranks, {args.latency} per message; one training step, best of {args.repeat}; "
          f"load average {os.getloadavg()}")
    print(f"depth 1 with its halos skipped (floor): {m['floor']:.4f} s; blocking halo share of depth 1's step: "
          f"{(one - m['floor']) / one:.0%}")
    print(f"{'depth':>6} {'step s':>9} {'vs depth 1':>11} {'predicted s':>12}")
    for d in args.depths.split(","):
        print(f"{d:>6} {m[d]:9.4f} {one / m[d]:10.2f}x {pred.get(int(d), float('nan')):12.4f}")
    best = min((d for d in args.depths.split(",")), key=lambda d: m[d])
    at_pick = m.get(str(picked))
    tail = f"{at_pick / m[best]:.2f}x the best's time" if at_pick is not None else "not among the measured depths"
    print(f"best measured: depth {best} ({one / m[best]:.2f}x depth 1); halo_depth='auto' picks {picked}: {tail}")


if __name__ == "__main__":
    main()
