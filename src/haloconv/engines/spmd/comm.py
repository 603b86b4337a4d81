"""Point-to-point messages over a torch.distributed process group, every byte counted.

Works on any ProcessGroup object (a standalone gloo group of a LocalCluster, or the
default group under torchrun; NCCL too, which ignores tags: every pair of ranks posts its
messages in the same order, so matching by order is enough).
"""

from __future__ import annotations

import heapq
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from haloconv.tiling.messages import PHASES, Traffic

TAGS = {"control": 1, "weights": 2, "scatter": 3, "halo": 4, "gather": 5}
# a network stood in for by this machine's links (benchmarks and tests): "LATENCY[,BANDWIDTH]",
# e.g. "100us" or "1ms,1GB/s"; read by every Comm a process makes (workers inherit it)
LINK_ENV = "HALOCONV_LINK"
P2P_ENV = "HALOCONV_P2P"


@dataclass(frozen=True)
class Link:
    """A slower network than the one the ranks share: every message leaves ``latency_s``
    after it is posted, and the messages to one rank leave one after another at
    ``bandwidth_Bps`` (None: as fast as the transport).  For benchmarks and tests only:
    what overlap and deep halos hide at a network's latency, measured on one machine.

    >>> Link.parse("1ms,1GB/s")
    Link(latency_s=0.001, bandwidth_Bps=1000000000.0)
    """

    latency_s: float = 0.0
    bandwidth_Bps: float | None = None

    @staticmethod
    def parse(text: str) -> Link:
        from haloconv import units

        parts = [p for p in text.split(",") if p.strip()]
        if not 1 <= len(parts) <= 2:
            raise ValueError(f"{LINK_ENV} must be 'LATENCY' or 'LATENCY,BANDWIDTH' (e.g. 1ms,1GB/s), got {text!r}")
        latency = 0.0 if parts[0].strip() in ("0", "0s") else units.quantity(parts[0], units.SECONDS, LINK_ENV)
        bandwidth = units.quantity(parts[1], units.BYTES, LINK_ENV) if len(parts) == 2 else None
        return Link(latency, bandwidth)

    @staticmethod
    def from_env() -> Link | None:
        text = os.environ.get(LINK_ENV, "").strip()
        return Link.parse(text) if text else None

    def seconds(self, nbytes: int) -> float:
        return self.latency_s + (nbytes / self.bandwidth_Bps if self.bandwidth_Bps else 0.0)


class _Delayed:
    """Sends posted to the transport only once their link lets them leave (a Comm with a
    Link).  One thread for the process posts every delayed send in the order they are due,
    so the messages from one rank to another keep their order (gloo matches them by order),
    whichever Comm posted them; it ends when nothing is due, holding no process group."""

    def __init__(self) -> None:
        self._due: list = []
        self._lock = threading.Condition()
        self._free: dict[tuple[int, int], float] = {}  # (group, destination): when its link is free again
        self._seq = 0
        self._running = False

    def send(self, pg, link: Link, t: torch.Tensor, dst: int, tag: int) -> _DelayedWork:
        work = _DelayedWork()
        with self._lock:
            key = (id(pg), dst)
            start = max(time.monotonic() + link.latency_s, self._free.get(key, 0.0))
            leave = start + (t.numel() * t.element_size() / link.bandwidth_Bps if link.bandwidth_Bps else 0.0)
            self._free[key] = leave
            self._seq += 1
            heapq.heappush(self._due, (leave, self._seq, pg, t, dst, tag, work))
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="haloconv-link", daemon=True).start()
            self._lock.notify()
        return work

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._due and self._due[0][0] > time.monotonic():
                    self._lock.wait(max(0.0, self._due[0][0] - time.monotonic()))
                if not self._due:
                    self._running = False
                    return
                _, _, pg, t, dst, tag, work = heapq.heappop(self._due)
            try:
                work.posted(pg.send([t], dst, tag))
            except BaseException as e:  # noqa: BLE001 - raised by the sender's wait
                work.posted(None, e)
            del pg


_SENDER = _Delayed()


class _DelayedWork:
    """What isend returns on a delayed link: wait() returns once the send has left and
    the transport has it."""

    def __init__(self) -> None:
        self._event, self._work, self._error = threading.Event(), None, None

    def posted(self, work, error: BaseException | None = None) -> None:
        self._work, self._error = work, error
        self._event.set()

    def wait(self, timeout=None) -> bool:
        self._event.wait()
        if self._error is not None:
            raise self._error
        return self._work.wait() if timeout is None else self._work.wait(timeout)

    def is_completed(self) -> bool:
        return self._event.is_set() and self._work is not None and self._work.is_completed()


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
    # a slower network for benchmarks and tests (Link; default: $HALOCONV_LINK, else none)
    link: Link | None = field(default_factory=Link.from_env)
    # post a step's point-to-point messages as one group (NCCL needs it, see post); gloo
    # takes them one by one unless $HALOCONV_P2P=batched (which tests the grouped path on CPU)
    batched: bool = field(default_factory=lambda: os.environ.get(P2P_ENV, "") == "batched")

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
        if self.link is not None and (self.link.latency_s > 0 or self.link.bandwidth_Bps):
            return _SENDER.send(self.pg, self.link, t, dst, TAGS[phase])
        return self.pg.send([t], dst, TAGS[phase])

    def irecv(self, t: torch.Tensor, src: int, phase: str):
        assert t.is_contiguous()
        self.stats[phase].add_recv(t.numel() * t.element_size())
        return self.pg.recv([t], src, TAGS[phase])

    def post(self, sends: list, recvs: list, phase: str) -> list:
        """Post sends [(tensor, dst)] and receives [(tensor, src)] at once.  With ``batched``
        (NCCL) they go as one group (batch_isend_irecv): NCCL runs a pair's point-to-point
        calls in order on one stream, so two ranks that each send to the other before
        receiving would wait on each other for large messages; a group lets both proceed.
        gloo matches messages by tag and order and takes them one by one."""
        if not self.batched or (self.link is not None and (self.link.latency_s > 0 or self.link.bandwidth_Bps)):
            return [self.isend(t, d, phase) for t, d in sends] + [self.irecv(t, s, phase) for t, s in recvs]
        if not sends and not recvs:
            return []
        for t, _ in sends:
            self.stats[phase].add_send(t.numel() * t.element_size())
        for t, _ in recvs:
            self.stats[phase].add_recv(t.numel() * t.element_size())
        peer = (lambda r: r) if self.group is None else (lambda r: dist.get_global_rank(self.group, r))
        ops = [dist.P2POp(dist.isend, t, peer(d), self.group, TAGS[phase]) for t, d in sends]
        ops += [dist.P2POp(dist.irecv, t, peer(s), self.group, TAGS[phase]) for t, s in recvs]
        return dist.batch_isend_irecv(ops)

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
        if self.link is not None and self.world > 1:  # a ring's 2 (P - 1) steps, each a message
            steps = 2 * (self.world - 1)
            time.sleep(max(0.0, steps * self.link.seconds(math.ceil(nbytes / self.world)) - (time.perf_counter() - t0)))
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

