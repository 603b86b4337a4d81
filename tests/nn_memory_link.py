"""Run under torchrun by tests/test_nn_scaling.py (2 ranks).

memory: what a parallelized network keeps for backward, seen through saved-tensor hooks,
is its shard of each activation plus the halos it received, layer by layer, counted from
the plans apart from the code that saves them.
link: with $HALOCONV_LINK set, every halo message leaves no earlier than its latency after
it was posted, messages keep their order under a bandwidth cap, and training is exact."""

import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn

import haloconv.nn as hnn
import spmd_group
from haloconv.distributed import comm_for
from haloconv.engines.spmd.comm import Link

spmd_group.join()
rank, world = dist.get_rank(), dist.get_world_size()
what = sys.argv[1]

if what == "memory":
    torch.manual_seed(0)
    shape = (1, 4, 64, 48)
    convs = [nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 5, padding=2), nn.Conv2d(8, 4, 3, padding=2, dilation=2)]
    model = hnn.parallelize(nn.Sequential(convs[0], nn.ReLU(), convs[1], nn.ReLU(), convs[2]), partition="rows")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:  # activations only, each storage once
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = hnn.shard(torch.randn(shape), "rows")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    # expected, by hand (rows split evenly, stride 1, 'same' size): each conv's input shard
    # and the halo rows it receives from the neighbour
    want, channels, h, w = 0, shape[1], shape[2], shape[3]
    for conv in convs:
        lo, hi = rank * h // world, (rank + 1) * h // world
        k, d, pad = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
        need_lo, need_hi = max(0, lo - pad), min(h, hi - pad + (k - 1) * d)
        halo_rows = (lo - need_lo) + (need_hi - hi)
        want += (hi - lo + halo_rows) * channels * w * 4
        channels = conv.out_channels
    got = sum(saved.values())
    assert got == want, (rank, got, want, sorted(saved.values()))
    y.sum().backward()
    print(f"MEMORY rank {rank}: {got} bytes kept = shards + halos", flush=True)

if what == "link":
    link = Link.from_env()
    assert link is not None and link.latency_s > 0, os.environ.get("HALOCONV_LINK")
    comm = comm_for()
    # order under a bandwidth cap: a big message then a small one on the same tag
    big, small = torch.arange(200_000, dtype=torch.float32), torch.full((3,), 7.0)
    dist.barrier()  # both ranks start the exchange together: the receiver's wait is the link's delay
    if rank == 0:
        posted = time.monotonic()
        works = [comm.isend(big, 1, "halo"), comm.isend(small, 1, "halo")]
        comm.wait(works)
        assert time.monotonic() - posted >= link.seconds(big.numel() * 4)  # left no earlier than the link lets it
    else:
        a, b = torch.empty_like(big), torch.empty_like(small)
        t0 = time.monotonic()
        comm.wait([comm.irecv(a, 0, "halo"), comm.irecv(b, 0, "halo")])
        waited = time.monotonic() - t0
        assert torch.equal(a, big) and torch.equal(b, small)
        # delivered no sooner than the link lets it (half of it: the ranks leave the barrier
        # a little apart); loopback without the link takes well under a millisecond
        assert waited >= 0.5 * link.seconds(big.numel() * 4), (waited, link)
    # training over the slow link: exact against one process
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 24, dtype=torch.float64)
    ref = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 2, 3, padding=1)).double()
    model = hnn.parallelize(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(6, 2, 3, padding=1)).double(), partition="rows")
    model.load_state_dict(ref.state_dict())
    hnn.sum_shards(model(hnn.shard(x, "rows")).square().sum()).backward()
    ref(x).square().sum().backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-10, atol=1e-12), (p.grad - q.grad).abs().max()
    print(f"LINK rank {rank}: ordered, delayed, exact", flush=True)

spmd_group.leave()
