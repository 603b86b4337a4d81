"""Train a small fully-convolutional segmentation network on large synthetic images, each
image split into bands of rows across torchrun ranks (gloo on CPU, NCCL on GPU).

    torchrun --nproc-per-node=2 examples/train_large_images.py --size 1024 --steps 20

Each rank renders only its own rows of every image (bright disks on noise; the target is
the disk mask), so no rank ever holds a whole image or a whole activation.  The loss is a
mean over every pixel: per-rank sums meet in one all-reduce.  ``--verify`` also trains the
same network on whole images in one process (on rank 0; its peak RSS then includes that)
and prints the largest relative difference of the loss and parameters.
"""

import argparse
import copy
import resource

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import haloconv.nn as hnn


def network(c: int) -> nn.Module:
    """Dilated conv stack: a receptive field of 31 pixels at full resolution."""
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=4, dilation=4), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=8, dilation=8), nn.ReLU(),
        nn.Conv2d(c, 1, 1),
    )


def render(box: tuple[slice, ...], size: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows/cols ``box`` of step ``step``'s image and mask: the same disks on every rank."""
    g = torch.Generator().manual_seed(step)
    n = 12
    cy, cx = torch.rand(n, generator=g) * size, torch.rand(n, generator=g) * size
    r = (0.02 + 0.06 * torch.rand(n, generator=g)) * size
    ys = torch.arange(box[2].start, box[2].stop).to(cy.dtype)
    xs = torch.arange(box[3].start, box[3].stop).to(cy.dtype)
    d2 = (ys[None, :, None] - cy[:, None, None]) ** 2 + (xs[None, None, :] - cx[:, None, None]) ** 2
    mask = (d2 <= r[:, None, None] ** 2).any(0).to(cy.dtype)
    # noise drawn row by row, so a rank draws only its rows (a real job reads them from disk)
    noise = torch.stack([torch.randn(size, generator=torch.Generator().manual_seed(step * 1_000_003 + row))
                         for row in range(box[2].start, box[2].stop)])[:, box[3]]
    img = mask * 0.8 + 0.5 * noise
    return img[None, None], mask[None, None]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--partition", default="rows", choices=("rows", "cols", "grid"))
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--verify", action="store_true", help="also train on whole images in one process (rank 0)")
    ap.add_argument("--double", action="store_true", help="float64 (the difference to one process is then ~1e-12)")
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    if args.double:
        torch.set_default_dtype(torch.float64)
    reference = network(args.channels)
    model = hnn.parallelize(copy.deepcopy(reference), partition=args.partition)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=args.lr, momentum=0.9)
    shape = (1, 1, args.size, args.size)
    box = hnn.local_box(shape, args.partition)
    pixels = args.size * args.size
    worst = 0.0
    for step in range(args.steps):
        x, target = render(box, args.size, step)
        saved: dict[int, int] = {}

        def keep(t: torch.Tensor, saved=saved):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            logits = model(x)
        # mean over all pixels of the image: per-rank sums, one all-reduce
        loss = hnn.sum_shards(F.binary_cross_entropy_with_logits(logits, target, reduction="sum")) / pixels
        opt.zero_grad()
        loss.backward()
        opt.step()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        mem = torch.tensor([sum(saved.values()) / 2**20, rss], dtype=torch.float64)
        per_rank = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(per_rank, mem)
        line = (f"step {step:3d}  loss {loss.item():.5f}  activations MB/rank "
                + " ".join(f"{m[0]:.0f}" for m in per_rank)
                + "  peak RSS MB/rank " + " ".join(f"{m[1]:.0f}" for m in per_rank))
        if args.verify and rank == 0:  # the same step on whole images, one process
            whole = (slice(None), slice(None), slice(0, args.size), slice(0, args.size))
            xf, tf = render(whole, args.size, step)
            ref_loss = F.binary_cross_entropy_with_logits(reference(xf), tf)
            ref_opt.zero_grad()
            ref_loss.backward()
            ref_opt.step()
            diff = max([abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())]
                       + [((a - b).abs().max() / b.abs().max()).item()
                          for a, b in zip(model.parameters(), reference.parameters())])
            worst = max(worst, diff)
            line += f"  vs one process: {diff:.1e}"
        if rank == 0:
            print(line, flush=True)
    if args.verify and rank == 0:
        print(f"largest relative difference to one-process training: {worst:.1e}")
    dist.barrier()  # leave together: a rank tearing gloo down while a peer still works can abort at exit
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
