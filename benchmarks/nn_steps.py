"""What the nn benchmarks share (nn_overlap.py, nn_deep.py): the conv stack they train, one
timed training step, and the floor — the same step with its halo messages skipped."""

from __future__ import annotations

import time


def conv_stack(channels: int, layers: int):
    """``layers`` x (Conv2d C->C 3x3 padding 1 + ReLU) in an nn.Sequential."""
    import torch.nn as nn

    mods = []
    for _ in range(layers):
        mods += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*mods)


def train_step(model, x) -> float:
    """Seconds of one step on every rank: forward, a sum loss over the shards, backward."""
    import torch.distributed as dist

    import haloconv.nn as hnn

    dist.barrier()
    t0 = time.perf_counter()
    model.zero_grad(set_to_none=True)
    hnn.sum_shards(model(x).sum()).backward()
    dist.barrier()
    return time.perf_counter() - t0


class _Done:
    def wait(self, timeout=None):
        return True


def skip_halos(skip: bool) -> None:
    """Halo messages do nothing (sends are dropped, receives read zeros) while ``skip``:
    the step's compute without its exchange.  Other phases (all-reduces) still travel."""
    from haloconv.engines.spmd import comm

    real = comm.Comm.__dict__.get("_real_p2p")
    if real is None:
        real = comm.Comm._real_p2p = (comm.Comm.isend, comm.Comm.irecv)
    real_isend, real_irecv = real

    def isend(self, t, dst, phase):
        return _Done() if phase == "halo" else real_isend(self, t, dst, phase)

    def irecv(self, t, src, phase):
        if phase == "halo":
            t.zero_()
            return _Done()
        return real_irecv(self, t, src, phase)

    comm.Comm.isend, comm.Comm.irecv = (isend, irecv) if skip else real
