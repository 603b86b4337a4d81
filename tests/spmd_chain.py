"""Run under torchrun by tests/test_distributed.py: three conv layers kept sharded."""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

import haloconv
import haloconv.distributed as hd
import spmd_group
from haloconv.compute import kernels

spmd_group.join()
rank, world = dist.get_rank(), dist.get_world_size()
hd.traffic()  # counted from here: an earlier case of the launch (tests/spmd_cases.py) used the group too
partition = sys.argv[1]
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 3, 33, 27, generator=g, dtype=torch.float64)
ws = [torch.randn(8, 3, 3, 3, generator=g, dtype=torch.float64),
      torch.randn(8, 8, 5, 5, generator=g, dtype=torch.float64),
      torch.randn(4, 8, 3, 3, generator=g, dtype=torch.float64)]
pads = [1, 2, 1]
modes = ["zeros", "circular", "reflect"]
shape = tuple(x.shape)
plans = []
for w, p, m in zip(ws, pads, modes):
    plans.append(haloconv.plan(shape, w.shape, padding=p, padding_mode=m, partition=partition, workers=world,
                               ownership="even"))
    shape = plans[-1].spec.output_shape
h = hd.scatter(x if rank == 0 else None, plans[0])
for w, plan in zip(ws, plans):
    h = hd.conv(h, w, None, plan=plan)  # the output shard is the next layer's input shard
y = hd.gather(h, plans[-1])
tr = hd.traffic()
# exactly the bytes the plans predict: scatter of layer 1, halos of every layer, gather of the last
expect_halo = sum(p.traffic(8, send_weights=False)[rank]["halo"].bytes_sent for p in plans)
assert tr["halo"]["bytes_sent"] == expect_halo, (tr["halo"], expect_halo)
assert tr["scatter"]["bytes_recv"] == plans[0].traffic(8)[rank]["scatter"].bytes_recv
assert tr["gather"]["bytes_sent"] == plans[-1].traffic(8)[rank]["gather"].bytes_sent
if rank == 0:
    ref = x
    for w, p, m in zip(ws, pads, modes):
        ref = F.conv2d(F.pad(ref, (p,) * 4, mode=m) if m != "zeros" else ref, w, None, 1, 0 if m != "zeros" else p)
    assert kernels.matches_single_node(y, ref), (y - ref).abs().max()
    print("SPMD CHAIN EXACT")
spmd_group.leave()
