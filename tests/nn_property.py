"""Run under torchrun by tests/test_nn.py: hypothesis draws sharded conv and pool layers
(1-3-D, kernels, strides, dilations, paddings and padding modes, groups, partitions, odd
shapes); forward must be bitwise equal to the torch layer and every gradient close.
Every rank draws the same examples (derandomized) and every check is decided together
(an all-reduce of the failures), so the ranks always run the same collectives."""

import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import haloconv.nn as hnn
import spmd_group
from haloconv.compute import kernels

spmd_group.join()
rank, world = dist.get_rank(), dist.get_world_size()
EXAMPLES = int(sys.argv[1]) if len(sys.argv) > 1 else 30
COUNT = {"tested": 0, "skipped": 0, "empty shards": 0}
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
DCONV = {1: hnn.DistributedConv1d, 2: hnn.DistributedConv2d, 3: hnn.DistributedConv3d}
MAXP = {1: (nn.MaxPool1d, hnn.DistributedMaxPool1d), 2: (nn.MaxPool2d, hnn.DistributedMaxPool2d),
        3: (nn.MaxPool3d, hnn.DistributedMaxPool3d)}
AVGP = {1: (nn.AvgPool1d, hnn.DistributedAvgPool1d), 2: (nn.AvgPool2d, hnn.DistributedAvgPool2d),
        3: (nn.AvgPool3d, hnn.DistributedAvgPool3d)}


def agree(ok: bool) -> bool:
    """True only if every rank's check passed."""
    t = torch.tensor([0 if ok else 1])
    dist.all_reduce(t)
    return t.item() == 0


@st.composite
def case(draw):
    nd = draw(st.sampled_from((1, 2, 2, 3)))
    parts = {1: ["cols"], 2: ["rows", "cols", "grid"], 3: ["depth", "rows", "grid"]}[nd]
    part = draw(st.sampled_from(parts))
    kind = draw(st.sampled_from(("conv", "conv", "conv", "max", "avg")))
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    if kind == "conv":
        groups = draw(st.sampled_from((1, 1, 2)))
        d = tuple(draw(st.integers(1, 3)) for _ in range(nd))
        mode = draw(st.sampled_from(("zeros", "zeros", "reflect", "replicate", "circular")))
        same = draw(st.booleans())
        pad = "same" if same else tuple(draw(st.integers(0, 3)) for _ in range(nd))
        layer = dict(in_channels=2 * groups, out_channels=draw(st.integers(1, 2)) * groups, kernel_size=k,
                     stride=1 if same else s, padding=pad, dilation=d, groups=groups,
                     bias=draw(st.booleans()), padding_mode=mode)
    else:
        d = tuple(draw(st.integers(1, 2)) for _ in range(nd)) if kind == "max" else (1,) * nd
        pad = tuple(draw(st.integers(0, ((kk - 1) * dd + 1) // 2)) for kk, dd in zip(k, d))
        layer = dict(kernel_size=k, stride=s, padding=pad)
        if kind == "max":
            layer["dilation"] = d
        else:
            pad = tuple(min(p, kk // 2) for p, kk in zip(pad, k))
            layer.update(padding=pad, count_include_pad=draw(st.booleans()))
    # mostly axes long enough for every rank to hold a part of the output; a quarter of the
    # cases thin (down to one index): some ranks then hold empty input or output shards
    lo = {1: 3 * world + 8, 2: 2 * world + 8, 3: world + 6}[nd]
    lo = 1 if draw(st.integers(0, 3)) == 0 else lo
    spatial = tuple(draw(st.integers(lo, lo + 12)) for _ in range(nd))
    return kind, nd, part, layer, (draw(st.integers(1, 2)), layer.get("in_channels", 2), *spatial)


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=True)
@given(case())
def test_sharded_layer_equals_torch(c):
    kind, nd, part, args, shape = c
    torch.manual_seed(0)
    if kind == "conv":
        ref = CONV[nd](**args, dtype=torch.float64)
        make = lambda: DCONV[nd].from_module(ref, partition=part)  # noqa: E731
    else:
        base, dist_cls = (MAXP if kind == "max" else AVGP)[nd]
        ref = base(**args)
        make = lambda: dist_cls.from_module(ref, partition=part)  # noqa: E731
    try:
        out_shape = ref(torch.zeros(shape, dtype=torch.float64)).shape
        torch_ok = True
    except (ValueError, RuntimeError):
        torch_ok = False
    if not agree(torch_ok):
        COUNT["skipped"] += 1
        return  # a configuration torch refuses (on some rank): no example, skipped everywhere
    # what torch takes, haloconv takes: its refusal is a failure, not a skip
    try:
        hnn.local_box(out_shape, part)  # output splits too
        layer = make()
        ok_shape = True
    except (ValueError, RuntimeError) as e:
        ok_shape, why = False, e
    assert agree(ok_shape), f"rank {rank}: haloconv refused {c}, which torch computes: {why if not ok_shape else ''}"
    COUNT["tested"] += 1
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xr = x.clone().requires_grad_()
    yr = ref(xr)
    g = torch.randn(yr.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (yr * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    for p in ref.parameters():
        p.grad = None
    xd = x.clone().requires_grad_()
    xs = hnn.shard(xd, part)
    ys = layer(xs)
    COUNT["empty shards"] += not agree(xs.numel() > 0 and ys.numel() > 0)  # on some rank
    y = hnn.unshard(ys, part)
    (y * g).sum().backward()
    # pooling bit for bit; a conv as the engines (GEMM_RTOL where this CPU's GEMM rounds by size)
    same = torch.equal(y, yr) if kind != "conv" else kernels.matches_single_node(y.detach(), yr.detach())
    ok = same and torch.allclose(xd.grad, xr.grad, rtol=1e-10, atol=1e-12) and all(
        torch.allclose(p.grad, grads[n], rtol=1e-10, atol=1e-12) for n, p in layer.named_parameters())
    assert agree(ok), f"rank {rank}: {c} (forward equal: {same})"


test_sharded_layer_equals_torch()
assert COUNT["tested"] >= COUNT["skipped"], COUNT  # the strategy must mostly draw valid layers
assert COUNT["empty shards"] >= EXAMPLES // 20, COUNT  # and reach ranks with empty shards
if rank == 0:
    print(f"PROPERTY OK {COUNT}")
spmd_group.leave()
