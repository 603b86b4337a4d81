"""Run under torchrun (3 ranks) by tests/test_distributed.py: tiles that own no input on an
axis (the split makes more parts than the input has rows, with a halo drawn from several
owners) through the SPMD face and through haloconv.nn (a rank with an empty shard), and
halos drawn from several owners through nn, forward and backward."""

import torch
import torch.distributed as dist
import torch.nn as nn

import haloconv
import haloconv.distributed as hd
import haloconv.nn as hnn
import spmd_group
from haloconv.compute import kernels

spmd_group.join()
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
# the reported case: H split in 3, the last tile owns rows 3:3
x = torch.randn(1, 8, 3, 3, 8, generator=g, dtype=torch.float64)
w = torch.randn(1, 8, 2, 1, 3, generator=g, dtype=torch.float64)
kw = dict(stride=(3, 1, 1), dilation=(3, 1, 2), padding=(3, 4, 1), padding_mode="replicate")
ref_layer = nn.Conv3d(8, 1, (2, 1, 3), bias=False, dtype=torch.float64, **kw)
with torch.no_grad():
    ref_layer.weight.copy_(w)
xr = x.clone().requires_grad_()
ref = ref_layer(xr)
gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
(ref * gy).sum().backward()

plan = haloconv.plan(x.shape, w.shape, partition="grid", workers=world, **kw)
assert any(t.owned.volume == 0 for t in plan.tiles), [t.owned for t in plan.tiles]
y = hd.gather(hd.conv(hd.scatter(x if rank == 0 else None, plan), w, None, plan=plan), plan)
if rank == 0:
    assert kernels.matches_single_node(y, ref.detach()), (y - ref).abs().max()

# haloconv.nn: an activation with fewer rows than ranks leaves a rank an empty shard (here
# the output's H=2 over 3 ranks); forward and backward equal torch's
layer = hnn.DistributedConv3d.from_module(ref_layer, partition="grid")
xs = hnn.shard(x.clone(), "grid").requires_grad_()
ys = layer(xs)
assert ys.numel() == 0 if rank == 2 else ys.numel() > 0, (rank, ys.shape)
y3 = hnn.unshard(ys, "grid")
assert kernels.matches_single_node(y3.detach(), ref.detach()), (y3 - ref).abs().max()
(y3 * gy).sum().backward()
want = hnn.shard(xr.grad, "grid")
assert torch.allclose(xs.grad, want, rtol=1e-10, atol=1e-12), (xs.grad - want).abs().max()
assert torch.allclose(layer.weight.grad, ref_layer.weight.grad, rtol=1e-10, atol=1e-12)
# and where every rank holds rows, halos from several owners through nn, forward and backward
x2 = torch.randn(1, 2, 7, 9, generator=g, dtype=torch.float64)
torch.manual_seed(0)  # the same initial weights on every rank
ref2 = nn.Conv2d(2, 3, 5, padding=4, dilation=2, padding_mode="reflect", dtype=torch.float64)
x2r = x2.clone().requires_grad_()
out2 = ref2(x2r)
g2 = torch.randn(out2.shape, generator=g, dtype=torch.float64)
(out2 * g2).sum().backward()
layer2 = hnn.DistributedConv2d.from_module(ref2, partition="rows")
x2d = x2.clone().requires_grad_()
y2 = hnn.unshard(layer2(hnn.shard(x2d, "rows")), "rows")
(y2 * g2).sum().backward()
assert kernels.matches_single_node(y2.detach(), out2.detach()), (y2 - out2).abs().max()
assert torch.allclose(x2d.grad, x2r.grad, rtol=1e-10, atol=1e-12), (x2d.grad - x2r.grad).abs().max()
assert torch.allclose(layer2.weight.grad, ref2.weight.grad, rtol=1e-10, atol=1e-12)
if rank == 0:
    print("EMPTY TILES EXACT")
spmd_group.leave()
