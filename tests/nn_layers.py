"""Run under torchrun by tests/test_nn.py: every sharded layer against its torch layer
(forward bitwise for conv and pooling, gradients close), and torch.autograd.gradcheck
of the sharded layers in float64 (shard -> layer -> unshard, the same on every rank)."""

import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.func import functional_call

import haloconv.nn as hnn
import spmd_group
from haloconv.compute import kernels
from haloconv.distributed import comm_for, traffic
from haloconv.nn.functional import replicate_grad

spmd_group.join()
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
D = torch.float64
DIST = {nn.Conv1d: hnn.DistributedConv1d, nn.Conv2d: hnn.DistributedConv2d, nn.Conv3d: hnn.DistributedConv3d,
        nn.MaxPool1d: hnn.DistributedMaxPool1d, nn.MaxPool2d: hnn.DistributedMaxPool2d,
        nn.MaxPool3d: hnn.DistributedMaxPool3d, nn.AvgPool1d: hnn.DistributedAvgPool1d,
        nn.AvgPool2d: hnn.DistributedAvgPool2d, nn.AvgPool3d: hnn.DistributedAvgPool3d,
        nn.BatchNorm2d: hnn.DistributedBatchNorm2d}

CASES = [  # (torch layer, input shape, partition)
    (nn.Conv2d(3, 4, 3, padding=1), (2, 3, 23, 19), "rows"),
    (nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2, padding_mode="reflect"), (1, 3, 25, 21), "grid"),
    (nn.Conv2d(4, 6, 4, padding="same", padding_mode="circular", groups=2), (1, 4, 17, 22), "cols"),
    (nn.Conv2d(3, 5, (3, 1), stride=(3, 1), padding=(0, 1), padding_mode="replicate"), (2, 3, 31, 9), "rows"),
    (nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), (1, 6, 20, 20), "grid"),
    (nn.Conv2d(3, 8, 3, padding=1), (2, 3, 12, 10), "channels"),
    (nn.Conv2d(4, 8, 3, padding=1, groups=4), (1, 4, 12, 10), "channels"),
    (nn.Conv2d(3, 4, 3, padding=1), (world, 3, 12, 10), "batch"),
    (nn.Conv1d(2, 3, 5, padding=2, dilation=2), (2, 2, 41), "cols"),
    (nn.Conv3d(2, 3, 3, padding=1, stride=(1, 2, 1)), (1, 2, 10, 12, 9), "grid"),
    (nn.MaxPool2d(2), (2, 3, 23, 19), "grid"),
    (nn.MaxPool2d(3, stride=2, padding=1, dilation=2), (1, 2, 29, 26), "rows"),
    (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (1, 2, 29, 26), "grid"),
    (nn.AvgPool2d(2, divisor_override=3), (1, 2, 16, 14), "cols"),
    (nn.MaxPool1d(3, stride=2), (1, 2, 40), "cols"),
    (nn.AvgPool3d(2, stride=2, padding=1), (1, 1, 9, 10, 11), "grid"),
    (nn.BatchNorm2d(3), (2, 3, 15, 13), "grid"),
]
small = len(sys.argv) > 1 and sys.argv[1] == "gradcheck"
for layer, shape, part in CASES:
    layer = layer.to(D)
    dlayer = DIST[type(layer)].from_module(layer, partition=part) if not isinstance(layer, nn.BatchNorm2d) \
        else hnn.DistributedBatchNorm2d.from_module(layer)
    x = torch.randn(shape, dtype=D)
    params = dict(layer.named_parameters())
    if small:  # gradcheck: analytical (our backward) vs numerical jacobian, inputs and parameters
        if x.numel() > 3000:
            continue
        names = list(params)

        def f(x, *ps, dlayer=dlayer, names=names, part=part):
            p = dict(zip(names, ps))
            if part == "channels":  # each rank owns its filters: the whole tensor's gradient is their sum
                comm = comm_for()
                p = {k: replicate_grad(v, comm)[dlayer.filters[0]:dlayer.filters[1]] for k, v in p.items()}
            y = functional_call(dlayer, p, (hnn.shard(x, part),))
            return hnn.unshard(y, part)

        inputs = (x.requires_grad_(), *(p.detach().clone().requires_grad_() for p in params.values()))
        try:
            torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, fast_mode=True)
        except Exception as e:
            raise AssertionError(f"{layer} {part}: {str(e)[:3000]}") from None
        continue
    xr = x.clone().requires_grad_()
    yr = layer(xr)
    g = torch.randn(yr.shape, dtype=D, generator=torch.Generator().manual_seed(3))
    (yr * g).sum().backward()
    xd = x.clone().requires_grad_()
    traffic(reset=True)
    y = hnn.unshard(dlayer(hnn.shard(xd, part)), part)
    (y * g).sum().backward()
    if hasattr(dlayer, "layout"):  # halo bytes moved = the plan's: forward sends, backward returns what came in
        moved = traffic().get("halo", {"bytes_sent": 0, "bytes_recv": 0})
        plan = dlayer.layout.plan(dlayer.spec_for(shape)).traffic(8, send_weights=False)[rank]["halo"]
        total = plan.bytes_sent + plan.bytes_recv
        assert (moved["bytes_sent"], moved["bytes_recv"]) == (total, total), (layer, part, moved, plan)
    exact = not isinstance(layer, nn.BatchNorm2d)
    same = kernels.matches_single_node(y, yr) if exact else torch.allclose(y, yr, rtol=1e-12, atol=1e-12)
    assert same, (layer, part)
    assert torch.allclose(xd.grad, xr.grad, rtol=1e-10, atol=1e-12), (layer, part)
    for name, p in params.items():
        got = dict(dlayer.named_parameters())[name].grad
        want = p.grad if part != "channels" else p.grad[dlayer.filters[0]:dlayer.filters[1]]
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), (layer, part, name)
        p.grad = None
class Spy:
    """The order of what an overlapped layer does, from inside the run (not from the plan):
    halos posted, interior computed, wait, borders; in backward, the halo gradients posted
    before the filters' gradients are computed.  A layer that waited for its halos before
    the interior, or reduced them after the filters, shows another order."""

    def __init__(self):
        from haloconv.engines.spmd.comm import Comm
        from haloconv.nn import functional

        self.events, self.on = [], False
        self.functional, self.comm_cls = functional, Comm
        self.real = (functional.spmd.post_halos, functional._compute_part, Comm.wait,
                     functional.spmd_backward.post_halo_reduce, functional.tile_backward)
        post, part, wait, post_grad, backward = self.real

        def log(name, real):
            def spied(*a, **kw):
                if self.on:
                    self.events.append(name(*a, **kw) if callable(name) else name)
                return real(*a, **kw)
            return spied

        functional.spmd.post_halos = log("post", post)
        functional._compute_part = log(lambda plan, tile, part_, x, incoming, *a: "border" if incoming
                                       else "interior", part)
        Comm.wait = staticmethod(log("wait", wait))
        functional.spmd_backward.post_halo_reduce = log("post grads", post_grad)
        functional.tile_backward = log(lambda plan, tile, window, weight, g, need: "filters grads" if not need[0]
                                       else "window grads", backward)

    def restore(self):
        f = self.functional
        f.spmd.post_halos, f._compute_part, wait, f.spmd_backward.post_halo_reduce, f.tile_backward = self.real
        self.comm_cls.wait = staticmethod(wait)

    def check(self) -> bool:
        """The order held; True when this rank's tile went through the interior/border path."""
        ev = self.events
        if "interior" not in ev:
            return False
        ev = ev[ev.index("post"):]  # from this layer's halo exchange on
        i = ev.index("interior")
        assert ev[0] == "post" and "wait" in ev[i:] and "border" in ev[ev.index("wait", i):], ev
        assert "wait" not in ev[1:i], ev  # nothing waited on before the interior was computed
        if "post grads" in ev:
            assert ev.index("window grads") < ev.index("post grads") < ev.index("filters grads"), ev
        return True


if not small:  # overlap=True: the blocking layer's results, forward and backward, on every conv case
    overlapped = spied = 0
    spy = Spy()
    f32 = [(nn.Conv2d(16, 16, 3, padding=1), (1, 16, 40, 36), "rows", torch.float32),  # oneDNN: bit for bit
           (nn.Conv2d(16, 8, 5, padding=2, padding_mode="reflect"), (1, 16, 33, 30), "grid", torch.float32)]
    for layer, shape, part, dtype in [(c[0], c[1], c[2], D) for c in CASES] + f32:
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        layer = layer.to(dtype)
        x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(5))
        runs = []
        for overlap in (False, True):
            d = DIST[type(layer)].from_module(layer, partition=part, overlap=overlap)
            xd = x.clone().requires_grad_()
            xs = hnn.shard(xd, part)
            spy.events.clear()
            spy.on = overlap
            ys = d(xs)
            y = hnn.unshard(ys, part)
            g = torch.randn(y.shape, dtype=dtype, generator=torch.Generator().manual_seed(6))
            (y * g).sum().backward()
            spy.on = False
            spied += overlap and spy.check()
            runs.append((y.detach(), xd.grad, [p.grad.clone() for p in d.parameters()]))
            for p in d.parameters():
                p.grad = None
            if overlap:
                plan = d.layout.plan(d.spec_for(shape))
                overlapped += plan.overlap_parts(plan.tile_of(rank))[0] is not None
        (y0, gx0, gp0), (y1, gx1, gp1) = runs
        xr = x.clone().requires_grad_()  # the single-node layer on the whole input
        yr = layer(xr)
        (yr * torch.randn(yr.shape, dtype=dtype, generator=torch.Generator().manual_seed(6))).sum().backward()
        assert kernels.matches_single_node(y1, yr.detach(), gemm=True), (layer, part)
        if dtype == torch.float64:  # gradients as the CASES loop checks them, against the single-node ones
            assert torch.allclose(gx1, xr.grad, rtol=1e-10, atol=1e-12), (layer, part)
            for a, (name, b) in zip(gp1, layer.named_parameters()):
                want = b.grad if part != "channels" else b.grad[d.filters[0]:d.filters[1]]
                assert torch.allclose(a, want, rtol=1e-10, atol=1e-12), (layer, part, name)
        layer.zero_grad(set_to_none=True)
        gemm = dtype == torch.float64  # float64 convs run as im2col + GEMM (kernels.matches_single_node)
        assert kernels.matches_single_node(y1, y0), (layer, part)
        assert (torch.equal(gx1, gx0) if not gemm else torch.allclose(gx1, gx0, rtol=1e-12, atol=1e-13)), (layer, part)
        for a, b in zip(gp1, gp0):
            assert torch.equal(a, b) if not gemm else torch.allclose(a, b, rtol=1e-12, atol=1e-13), (layer, part)
    assert overlapped >= 5, overlapped  # the cases reached the interior/border path
    assert spied == overlapped, (spied, overlapped)  # and did it in the order the overlap needs
    spy.restore()

if not small:  # shards that are not where the partition puts them: the same clear error on every rank
    conv = hnn.DistributedConv2d(1, 1, 3, partition="rows")
    try:
        conv(torch.zeros(1, 1, 10 // world + (1 if rank == 0 else -1 if rank == 1 else 0), 8))
        raise SystemExit("misplaced shard accepted")
    except ValueError as e:
        assert "holds a shard of shape" in str(e), e
if rank == 0:
    print("GRADCHECK OK" if small else "LAYERS OK")
spmd_group.leave()
