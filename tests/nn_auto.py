"""Run under torchrun (2 ranks) by tests/test_nn.py: what overlap='auto' and halo_depth='auto'
decide at a slow link ($HALOCONV_LINK) and at a fast one, and that the layers then run as
decided, with the single-process result.  The decisions read the cost model's profile
(cost.load_profile), here a fast transport of its own, so the test does not depend on this
machine's calibration; the slow link adds its delay to it, as on a real run."""

import copy
import dataclasses
import os

import torch
import torch.nn as nn

import haloconv.nn as hnn
import spmd_group
from haloconv.costmodel import cost
from haloconv.distributed import traffic
from haloconv.nn import functional

rank, world = spmd_group.join()
FAST = dataclasses.replace(cost.Profile(), latency_s=0.0, bandwidth_Bps=1e15)
LINKS = {"slow": "30ms,200MB/s", "fast": None}  # $HALOCONV_LINK
# a wide layer hides its halos behind its interior on the slow link only (on the fast one the
# parts' extra calls cost more than the halo); three convs share one deep halo on the slow
# link only (on the fast one the redundant rows cost more than two exchanges)
WANT = {"slow": (True, 3), "fast": (False, 1)}

parts = []
real_part = functional._compute_part


def counted(plan, tile, part, x, incoming, *a, **kw):
    parts.append("border" if incoming else "interior")
    return real_part(plan, tile, part, x, incoming, *a, **kw)


functional._compute_part = counted
real_load = cost.load_profile
cost.load_profile = lambda *a, **k: FAST
try:
    for link, env in LINKS.items():
        if env is None:
            os.environ.pop("HALOCONV_LINK", None)
        else:
            os.environ["HALOCONV_LINK"] = env
        torch.manual_seed(0)
        # overlap: one wide conv
        conv = nn.Conv2d(16, 16, 3, padding=1).double()
        dconv = hnn.DistributedConv2d.from_module(conv, partition="rows")  # overlap='auto' by default
        x = torch.randn(1, 16, 512, 512, dtype=torch.float64)
        parts.clear()
        y = hnn.unshard(dconv(hnn.shard(x, "rows")), "rows")
        assert torch.equal(y, conv(x)), link
        overlapped = "interior" in parts
        # halo_depth: three convs with element-wise layers between them
        ref = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(8, 4, 3, padding=1)).double()
        model = hnn.parallelize(copy.deepcopy(ref), partition="rows", overlap=False, halo_depth="auto")
        x = torch.randn(1, 4, 96, 64, dtype=torch.float64)
        traffic(reset=True)
        y = hnn.unshard(model(hnn.shard(x, "rows")), "rows")
        exchanges = traffic()["halo"]["messages_sent"]
        assert torch.allclose(y, ref(x), rtol=1e-12, atol=1e-12), link
        depth = next(iter(model.__dict__["_auto_depth"].values()))
        # one exchange per run of convs: 1 message per rank (2 ranks, one neighbour) at depth 3, 3 at depth 1
        assert exchanges == 3 // depth, (link, depth, exchanges)
        assert (overlapped, depth) == WANT[link], (link, overlapped, depth, WANT[link])
        if rank == 0:
            print(f"AUTO {link}: overlap={overlapped} halo_depth={depth} ({exchanges} halo message(s) per rank)")
finally:
    cost.load_profile = real_load
    os.environ.pop("HALOCONV_LINK", None)
    functional._compute_part = real_part
if rank == 0:
    print("AUTO DECISIONS OK")
spmd_group.leave()
