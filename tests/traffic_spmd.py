"""Run under torchrun (3 ranks) by tests/test_distributed.py: the bytes and messages that
really cross the process group — counted by a wrapper around the group itself, below
haloconv's Comm, control messages included — against haloconv's report and the Plan's
prediction, for a few plans."""

import torch
import torch.distributed as dist

import haloconv
import haloconv.distributed as hd
import spmd_group
from haloconv.tiling.messages import PHASES


class CountingGroup:
    """The default process group, every tensor a send/recv posts counted."""

    def __init__(self, pg):
        self.pg = pg
        self.bytes_sent = self.bytes_recv = self.messages_sent = self.messages_recv = 0

    def send(self, tensors, dst, tag):
        self.bytes_sent += sum(t.numel() * t.element_size() for t in tensors)
        self.messages_sent += 1
        return self.pg.send(tensors, dst, tag)

    def recv(self, tensors, src, tag):
        self.bytes_recv += sum(t.numel() * t.element_size() for t in tensors)
        self.messages_recv += 1
        return self.pg.recv(tensors, src, tag)

    def __getattr__(self, name):
        return getattr(self.pg, name)


spmd_group.join()
rank, world = dist.get_rank(), dist.get_world_size()
counting = CountingGroup(dist.distributed_c10d._get_default_group())
RealComm = hd.Comm
hd.Comm = lambda pg, *a, **k: RealComm(counting, *a, **k)  # every Comm comm_for makes talks through it
g = torch.Generator().manual_seed(0)
CASES = [  # (x shape, w shape, conv kwargs, partition)
    ((1, 3, 40, 33), (4, 3, 3, 3), dict(padding=1), "rows"),
    ((2, 2, 21, 25), (3, 2, 5, 5), dict(padding=2, padding_mode="circular"), "grid"),
    ((1, 2, 12, 30), (2, 2, 7, 3), dict(padding=(3, 1), dilation=(2, 1), padding_mode="reflect"), "rows"),
    ((1, 8, 3, 3, 8), (1, 8, 2, 1, 3), dict(stride=(3, 1, 1), dilation=(3, 1, 2), padding=(3, 4, 1),
                                            padding_mode="replicate"), "grid"),
]
lines = []
for xs, ws, kw, part in CASES:
    x = torch.randn(xs, generator=g, dtype=torch.float64)
    w = torch.randn(ws, generator=g, dtype=torch.float64)
    plan = haloconv.plan(xs, ws, partition=part, workers=world, **kw)
    hd.traffic()  # reset the report
    counting.bytes_sent = counting.bytes_recv = counting.messages_sent = counting.messages_recv = 0
    # the weights are on every rank already: scatter, halo exchange, compute, gather
    hd.gather(hd.conv(hd.scatter(x if rank == 0 else None, plan), w, None, plan=plan), plan)
    report = hd.traffic()
    predicted = plan.traffic(8, send_weights=False)[rank]
    wire = (counting.bytes_sent, counting.bytes_recv, counting.messages_sent, counting.messages_recv)
    reported = tuple(sum(v[k] for v in report.values())
                     for k in ("bytes_sent", "bytes_recv", "messages_sent", "messages_recv"))
    assert wire == reported, (xs, part, rank, wire, reported)
    data = tuple(sum(getattr(predicted[p], k) for p in PHASES)
                 for k in ("bytes_sent", "bytes_recv", "messages_sent", "messages_recv"))
    control = report["control"]
    assert reported == tuple(d + control[k] for d, k in zip(data, ("bytes_sent", "bytes_recv", "messages_sent",
                                                                   "messages_recv"))), (xs, part, rank)
    lines.append(f"rank {rank} {part} {'x'.join(map(str, xs))}: group {wire[0]} B sent / {wire[1]} B received "
                 f"in {wire[2]}/{wire[3]} messages; plan {data[0]}/{data[1]} B + control {control['bytes_sent']}/"
                 f"{control['bytes_recv']} B")
out = [None] * world
dist.all_gather_object(out, lines)
if rank == 0:
    for r in out:
        print("\n".join(r))
    print("TRAFFIC COUNTED")
dist.barrier()
# let go of the group before destroying it: a reference still held at interpreter exit
# tears gloo's threads down there, which now and then aborts a rank (see haloconv/nn)
hd.Comm = RealComm
counting.pg = None
spmd_group.leave()
