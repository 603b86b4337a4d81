"""Two conv layers kept sharded across torchrun ranks (gloo on CPU).

    torchrun --nproc-per-node=2 examples/spmd_layers.py

Rank 0 holds the input; each rank gets its band of rows, the layers exchange halos between
neighbours only, and rank 0 gathers the result and checks it against single-process torch.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

import haloconv
import haloconv.distributed as hd

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
x = torch.randn(1, 3, 256, 256, generator=g)
w1 = torch.randn(16, 3, 3, 3, generator=g)
w2 = torch.randn(8, 16, 5, 5, generator=g)

# ownership='even': layer 1's output shards are exactly layer 2's input shards
p1 = haloconv.plan(x.shape, w1.shape, padding=1, partition="rows", workers=world, ownership="even")
p2 = haloconv.plan(p1.spec.output_shape, w2.shape, padding=2, partition="rows", workers=world, ownership="even")

x_local = hd.scatter(x if rank == 0 else None, p1)
h_local = torch.relu(hd.conv(x_local, w1, plan=p1))
y = hd.gather(hd.conv(h_local, w2, plan=p2), p2)
moved = hd.traffic()
print(f"rank {rank}: halo bytes sent {moved['halo']['bytes_sent']:,}, received {moved['halo']['bytes_recv']:,}")
if rank == 0:
    ref = F.conv2d(torch.relu(F.conv2d(x, w1, padding=1)), w2, padding=2)
    print("bitwise equal to single-process torch:", torch.equal(y, ref))
dist.destroy_process_group()
