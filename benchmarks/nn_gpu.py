"""haloconv.nn on GPUs: a DistributedConv2d and a parallelized network on CUDA (NCCL), checked
against the one-GPU result, and the per-GPU throughput of a training step against one GPU's
cuDNN on the whole input.  Run it whenever a machine with GPUs is at hand:

    .venv/bin/python benchmarks/nn_gpu.py [--gpus N] [--size 1024] [--channels 32] [--layers 6]
        [--halo-depth 1] [--steps 5] [--device cuda|cpu]

It launches torchrun with one rank per GPU (N = all of them by default; NCCL refuses two
ranks on one GPU, so a 1-GPU machine runs one rank: the device paths and the cost of
haloconv's layers over plain cuDNN, no exchange).  ``--device cpu`` runs the same checks on
gloo ranks of this machine (how the tests keep the script working without a GPU).

Printed per rank 0:
  device check   every activation, gradient and halo buffer the step made stayed on the
                 device (a forward hook and the parameters' gradients are checked), and
                 the whole-input result was not copied to the host by haloconv;
  conv           a DistributedConv2d forward and backward vs the one-GPU conv: max relative
                 difference (cuDNN picks algorithms by shape, so tiles need not be bitwise);
  network        loss and every parameter gradient of one step vs the one-GPU network
                 (the largest difference over the largest gradient entry);
  throughput     seconds per training step on P ranks and on one GPU (whole input), and the
                 per-GPU efficiency t_1 / (P x t_P).
Not a test.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time


def _net(channels: int, layers: int):
    import torch.nn as nn

    mods = [nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
    for _ in range(layers - 1):
        mods += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*mods, nn.Conv2d(channels, 3, 3, padding=1))


def _worker(args) -> None:
    import torch
    import torch.distributed as dist

    import haloconv.nn as hnn  # before init_process_group (see haloconv/nn/__init__.py)

    cuda = args.device == "cuda"
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    part = "rows"

    def rel(a, b) -> float:
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # -- one conv ----------------------------------------------------------------------------
    x = torch.randn(1, args.channels, args.size, args.size, generator=gen).to(dev)
    ref_conv = torch.nn.Conv2d(args.channels, args.channels, 3, padding=1).to(dev)
    conv = hnn.DistributedConv2d.from_module(copy.deepcopy(ref_conv), partition=part)
    xs = hnn.shard(x, part).detach().requires_grad_()
    y = conv(xs)
    on_device = y.device == dev
    y_ref = ref_conv(x)
    conv_fwd = rel(hnn.unshard(y, part), y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    conv_grad = max(rel(a.grad, b.grad) for a, b in zip(conv.parameters(), ref_conv.parameters()))
    on_device &= xs.grad.device == dev and all(p.grad.device == dev for p in conv.parameters())

    # -- a network: one step, and the time per step -------------------------------------------
    ref = _net(args.channels, args.layers).to(dev)
    par = hnn.parallelize(copy.deepcopy(ref), partition=part, halo_depth=args.halo_depth)
    devices = set()
    for m in par.modules():
        m.register_forward_hook(lambda _m, _i, out, seen=devices: seen.add(out.device))
    img = torch.randn(1, 3, args.size, args.size, generator=gen).to(dev)
    loss_ref = ref(img).square().mean()
    loss_ref.backward()
    loss = hnn.sum_shards(par(hnn.shard(img, part)).square().sum()) / (3 * args.size * args.size)
    loss.backward()
    net_loss = rel(loss.detach(), loss_ref.detach())
    # relative to the largest gradient entry: a conv bias before BatchNorm has a gradient of ~0
    scale = max(b.grad.abs().max().item() for b in ref.parameters())
    net_grad = max((a.grad - b.grad).abs().max().item() for a, b in zip(par.parameters(), ref.parameters())) / scale
    on_device &= devices == {dev} and all(p.grad.device == dev for p in par.parameters())

    def step(model, inp) -> float:
        dist.barrier()
        sync()
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        out = model(inp)
        (hnn.sum_shards(out.square().sum()) if model is par else out.square().sum()).backward()
        sync()
        dist.barrier()
        return time.perf_counter() - t0

    shard_img = hnn.shard(img, part)
    step(par, shard_img)
    t_par = min(step(par, shard_img) for _ in range(args.steps))
    t_one = float("nan")
    if rank == 0:  # one GPU on the whole input, the others wait at the barrier
        ref.zero_grad(set_to_none=True)
        ref(img).square().sum().backward()
        sync()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            ref.zero_grad(set_to_none=True)
            ref(img).square().sum().backward()
            sync()
            times.append(time.perf_counter() - t0)
        t_one = min(times)
    dist.barrier()
    if rank == 0:
        name = torch.cuda.get_device_name(dev) if cuda else "cpu"
        print(f"{world} rank(s) on {name} ({dist.get_backend()}), 1x{args.channels}x{args.size}^2, partition {part}, "
              f"halo_depth {args.halo_depth}")
        print(f"device check: {'every tensor stayed on ' + str(dev) if on_device else 'A TENSOR LEFT THE DEVICE'}")
        print(f"conv: forward max rel diff {conv_fwd:.2e}, gradients {conv_grad:.2e}")
        print(f"network ({args.layers + 1} convs): loss rel diff {net_loss:.2e}, gradients {net_grad:.2e}")
        print(f"throughput: step {t_par:.4f} s on {world} rank(s), {t_one:.4f} s on one device (whole input); "
              f"per-device efficiency t1/(P*tP) = {t_one / (world * t_par):.2f}")
        print("GPU SCRIPT OK" if on_device else "GPU SCRIPT FAILED")
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=0, help="ranks (default: every GPU; with --device cpu: 2)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--halo-depth", type=lambda v: v if v == "auto" else int(v), default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA device here; --device cpu runs the same checks on gloo ranks")
        ranks = args.gpus or torch.cuda.device_count()
    else:
        ranks = args.gpus or 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", __file__,
           "--worker", *sys.argv[1:]]
    sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
