"""Run under torchrun by tests/test_nn.py: 5 SGD steps of a small CNN on 1 process (every
rank computes the reference itself) and sharded over the ranks; loss, every parameter and
the BatchNorm running statistics compared at every step."""

import copy
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

import haloconv.nn as hnn
import spmd_group
from haloconv.nn import functional as hf

LOCAL_CONVS = [0]  # convs computed inside a deep-halo run, counted apart from the code under test
_local_conv = hf.local_conv


def counted_local_conv(*args, **kw):
    LOCAL_CONVS[0] += 1
    return _local_conv(*args, **kw)


hf.local_conv = counted_local_conv

spmd_group.join()
rank = dist.get_rank()
partition = sys.argv[1] if sys.argv[1] in ("rows", "cols", "grid") else tuple(int(c) for c in sys.argv[1].split(","))
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def issue_model() -> nn.Module:  # conv-bn-relu-pool-conv-relu-pool-global avgpool-linear
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


def harder_model() -> nn.Module:  # strides, dilation, reflect/circular padding, overlapping pools
    return nn.Sequential(
        nn.Conv2d(3, 6, 5, stride=2, padding=2, padding_mode="reflect"), nn.BatchNorm2d(6), nn.GELU(),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.Conv2d(6, 8, 3, padding=2, dilation=2, padding_mode="circular", groups=2), nn.SiLU(),
        nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(8, 8, 3, padding="same", bias=False),
        nn.BatchNorm2d(8, momentum=None), nn.LeakyReLU(0.1),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(8, 5),
    )


def thin_model() -> nn.Module:  # downsampled until an activation has fewer rows/cols than ranks: empty shards
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, padding=1, padding_mode="replicate"), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def deep_model() -> nn.Module:  # runs of convs for deep halos: BN, reflect, dilated groups, replicate, stride
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 5, padding=2, padding_mode="reflect"), nn.GELU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2, padding_mode="replicate"), nn.ReLU(),
        nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    )


def deep_model_3d() -> nn.Module:  # a 3-D run: BN between convs, a strided conv, replicate padding
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
        nn.Conv3d(4, 4, 3, padding=1, padding_mode="replicate"), nn.SiLU(),
        nn.Conv3d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 5),
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


worst = {}
MODELS = [(issue_model, (4, 3, 30, 34)), (harder_model, (2, 3, 45, 38)), (thin_model, (2, 3, 10, 13)),
          (deep_model, (2, 3, 37, 29))]
if isinstance(partition, str):  # split counts name 2-D axes
    MODELS.append((deep_model_3d, (1, 2, 11, 9, 10)))
for make, shape in MODELS:
    # the thin model's few-element BatchNorm statistics amplify float32 reordering past
    # 1e-5: it checks the empty shards' structure in float64
    # float64 twice: blocking, and with every conv overlapping its halos (the same results);
    # the deep models with one halo per run of convs (halo_depth 3, then every run whole)
    if make is thin_model:
        runs = [(torch.float64, False, 1), (torch.float64, True, 1)]
    elif make in (deep_model, deep_model_3d):
        runs = [(torch.float64, False, 3), (torch.float64, "auto", 8)]
    else:
        runs = [(torch.float32, "auto", 1), (torch.float64, False, 1), (torch.float64, True, 1)]
    for dtype, overlap, depth in runs:
        torch.manual_seed(0)
        LOCAL_CONVS[0] = 0
        ref = make().to(dtype)
        par = hnn.parallelize(copy.deepcopy(ref), partition=partition, overlap=overlap, halo_depth=depth)
        opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ref, par)]
        empty = []  # shards of no element, seen at the layers' outputs
        for m in par.modules():
            m.register_forward_hook(lambda _m, _i, out, seen=empty: seen.append(out.numel() == 0))
        data = torch.Generator().manual_seed(1)
        err = 0.0
        for step in range(5):
            x = torch.randn(shape, generator=data, dtype=dtype)
            labels = torch.randint(0, 5, (shape[0],), generator=data)
            losses = []
            for model, opt, inp in ((ref, opts[0], x), (par, opts[1], hnn.shard(x, partition))):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(inp), labels)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
            err = max(err, rel(losses[1], losses[0]))
            for (name, a), b in zip(par.state_dict().items(), ref.state_dict().values()):
                if a.is_floating_point():
                    e = rel(a, b)
                    assert e <= TOL[dtype], f"{make.__name__} {dtype} step {step}: {name} off by {e:.2e}"
                    err = max(err, e)
                else:
                    assert torch.equal(a, b), name
            assert err <= TOL[dtype], f"{make.__name__} {dtype} step {step}: loss off by {err:.2e}"
        seen = torch.tensor([float(any(empty))])
        dist.all_reduce(seen)
        # deep models: every step's forward ran convs inside runs (deep_model: 5 of its 7 convs)
        assert (LOCAL_CONVS[0] >= 5 * 3) == (depth > 1), f"{make.__name__}: {LOCAL_CONVS[0]} convs in runs"
        if make not in (deep_model, deep_model_3d):
            assert (seen.item() > 0) == (make is thin_model), f"{make.__name__}: empty shards seen {seen.item()}"
        worst[(make.__name__, str(dtype), overlap, depth)] = err
if rank == 0:
    for k, v in worst.items():
        print(f"{k[0]:13s} {k[1]:14s} overlap={k[2]!s:5s} halo_depth={k[3]} max relative error over 5 steps: {v:.2e}")
    print("TRAINING PARITY OK")
spmd_group.leave()
