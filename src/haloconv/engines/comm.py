"""Point-to-point messages over a torch.distributed process group, every byte counted.

Works on any ProcessGroup object (a standalone gloo group of a LocalCluster, or the
default group under torchrun; NCCL too, which ignores tags: every pair of ranks posts its
messages in the same order, so matching by order is enough).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from haloconv.planning.messages import PHASES, Traffic

TAGS = {"control": 1, "weights": 2, "scatter": 3, "halo": 4, "gather": 5}


@dataclass
class PhaseStats(Traffic):
    seconds: float = 0.0


@dataclass
class Comm:
    """One rank's end of a process group, with per-phase accounting."""

    pg: object  # torch.distributed.ProcessGroup
    rank: int
    world: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    stats: dict[str, PhaseStats] = field(default_factory=dict)
    # how to get this Comm again (torch.distributed group handle; None: the default group),
    # so autograd graphs keep the handle rather than the process group itself
    group: object | None = None
    # > 1: this rank sleeps (slowdown - 1) x its compute time after each compute — a stand-in
    # for a slower machine in benchmarks and tests (LocalCluster's ``throttle``)
    slowdown: float = 1.0

    def __post_init__(self) -> None:
        if not self.stats:
            self.reset()

    def reset(self) -> None:
        self.stats = {p: PhaseStats() for p in (*PHASES, "control")}

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stats[name].seconds += time.perf_counter() - t0

    def pace(self, t0: float) -> None:
        """After a compute that started at ``t0``: be ``slowdown`` times slower."""
        if self.slowdown > 1:
            time.sleep((self.slowdown - 1) * (time.perf_counter() - t0))

    # -- tensors ----------------------------------------------------------------------------
    def isend(self, t: torch.Tensor, dst: int, phase: str):
        assert t.is_contiguous()
        self.stats[phase].add_send(t.numel() * t.element_size())
        return self.pg.send([t], dst, TAGS[phase])

    def irecv(self, t: torch.Tensor, src: int, phase: str):
        assert t.is_contiguous()
        self.stats[phase].add_recv(t.numel() * t.element_size())
        return self.pg.recv([t], src, TAGS[phase])

    def allreduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce ``t`` over all ranks in place (accounted as phase 'reduce': one message of
        its bytes each way per rank)."""
        s = self.stats.setdefault("reduce", PhaseStats())
        nbytes = t.numel() * t.element_size()
        s.add_send(nbytes)
        s.add_recv(nbytes)
        t0 = time.perf_counter()
        opts = dist.AllreduceOptions()
        opts.reduceOp = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        self.pg.allreduce([t], opts).wait()
        s.seconds += time.perf_counter() - t0
        return t

    @staticmethod
    def wait(works) -> None:
        for w in works:
            w.wait()

    def report(self) -> dict[str, dict[str, float]]:
        return {
            p: {
                "bytes_sent": s.bytes_sent,
                "bytes_recv": s.bytes_recv,
                "messages_sent": s.messages_sent,
                "messages_recv": s.messages_recv,
                "seconds": s.seconds,
            }
            for p, s in self.stats.items()
        }
