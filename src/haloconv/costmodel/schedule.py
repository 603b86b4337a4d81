"""The processes engine's schedule, simulated on a machine profile (behind cost.predict).

Every rank runs the program the engine runs (LocalCluster.run, engines/spmd/steps.py), in order:
post sends and receives, wait for them, compute, copy.  A message moves once its sender and
its receiver have both posted it (those of one phase between two ranks in the order posted); alone it takes
latency + bytes / bandwidth.  A rank computes on one thread and moves its messages on
another (gloo's), which its messages in flight share; all busy threads share the machine's
effective cores (processor sharing: n busy threads get cores(n) / n each).  This is what a
sum of phases misses: a halo that can only leave once its owner has its own box, a gather
that waits for the slowest worker, the master's link shared by the workers it feeds at
once (each gets a share of its bandwidth), and more processes than cores computing and
moving data at once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from haloconv.tiling.messages import PHASES, Message
from haloconv.tiling.plan import Plan

# a program step: ("post", transfer ids, "send"|"recv"), ("wait", transfer ids, phase), ("cpu", seconds, phase)
Step = tuple


@dataclass
class _Transfer:
    src: int
    dst: int
    phase: str  # messages of one phase (one tag) between two ranks arrive in the order posted
    seconds: float  # alone: messages x latency + bytes / bandwidth
    sent: bool = False
    received: bool = False
    left: float = 0.0
    state: int = 0  # 0 waiting, 1 moving, 2 done


@dataclass
class Timeline:
    """Per rank: seconds spent in each phase (waiting included); the makespan."""

    seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    makespan: float = 0.0


def processes_timeline(plan: Plan, compute_s, copy_Bps: float, latency_s: float, bandwidth_Bps: float,
                       cores, itemsize: int = 4, master: int = 0, messages: list[Message] | None = None) -> Timeline:
    """Simulate ``plan`` on the processes engine.  ``compute_s(tile)``: seconds of one tile's
    (or pipelined part's) compute on one core, window copy included; ``cores(n)``: the
    cores n busy tasks get together; ``messages``: plan.messages(itemsize, master), when the
    caller has them already."""
    if messages is None:
        messages = plan.messages(itemsize, master)
    groups, transfers = transfers_of(messages, latency_s, bandwidth_Bps)
    ids = {key: i for i, key in enumerate(groups)}

    def tid(phase: str, src: int, dst: int, part: int = 0) -> list[int]:
        key = (phase, src, dst, part)
        return [ids[key]] if key in ids else []

    def packed_s(phase: str, src: int, dst: int, part: int = 0) -> float:
        return sum(m.nbytes for m in groups.get((phase, src, dst, part), ()) if m.packed) / copy_Bps

    # what every rank's program needs, made once (per rank it would cost every rank again)
    workers = [t.rank for t in plan.tiles if t.rank != master]
    parts = {t.rank: plan.subtiles(t, master) for t in plan.tiles}
    halo_out: dict[int, list[int]] = defaultdict(list)  # src -> the halo transfers it sends
    for (phase, src, dst, _), i in ids.items():
        if phase == "halo" and src != dst:
            halo_out[src].append(i)
    own = plan.tile_of(master)
    copied_s = own.out.volume * itemsize / copy_Bps if own is not None else 0.0
    programs = {t.rank: _program(plan, t, master, tid, packed_s, compute_s, copied_s, workers, parts,
                                 halo_out[t.rank]) for t in plan.tiles}
    return _run(programs, transfers, cores)


def transfers_of(messages: list[Message], latency_s: float,
                 bandwidth_Bps: float) -> tuple[dict[tuple, list[Message]], list[_Transfer]]:
    """The messages grouped as they travel (the runs of one box back to back, per phase,
    sender, receiver and part) and, per group in that order, its transfer: its seconds alone
    are its messages' latencies plus its bytes over the bandwidth."""
    groups: dict[tuple, list[Message]] = defaultdict(list)
    for m in messages:
        groups[(m.phase, m.src, m.dst, m.part)].append(m)
    transfers = [_Transfer(src, dst, phase, len(ms) * latency_s + sum(m.nbytes for m in ms) / bandwidth_Bps)
                 for (phase, src, dst, _), ms in groups.items()]
    return groups, transfers


def reference_share(cores) -> float:
    """The share of a core a message's time alone was measured at (calibrate: its two ends
    busy on their own); a transfer moves at most 1 / this times its lone speed."""
    return min(1.0, cores(2) / 2)


def _program(plan: Plan, tile, master: int, tid, packed_s, compute_s, copied_s: float, workers: list[int],
             parts: dict, halo_out: list[int]) -> list[Step]:
    """What rank ``tile.rank`` does, in the engine's order (``copied_s``: the master's copy
    of its own output into the result; ``workers``: the ranks other than the master;
    ``parts``: each rank's subtiles; ``halo_out``: the halo transfers it sends)."""
    r = tile.rank
    halo_in = [i for p in tile.halo_pieces for i in tid("halo", p.owner, r)]
    if r == master:
        prog: list[Step] = []
        w = [i for d in workers for i in tid("weights", master, d)]
        prog += [("post", w, "send"), ("wait", w, "weights")]
        scatter = []
        for d in workers:  # each box packed (if it must be) and posted in turn
            for k in range(len(parts[d])):
                s = tid("scatter", master, d, k)
                prog += [("cpu", packed_s("scatter", master, d, k), "scatter"), ("post", s, "send")]
                scatter += s
        gathers = [(d, k) for d in workers for k in range(len(parts[d]))]
        g = [i for d, k in gathers for i in tid("gather", d, master, k)]
        if plan.exchange != "master":
            prog += [("wait", scatter, "scatter"), ("post", halo_out, "send"), ("post", halo_in, "recv"),
                     ("wait", halo_out + halo_in, "halo")]
        prog += [("post", g, "recv"), ("cpu", compute_s(tile), "compute"),
                 ("cpu", copied_s, "gather")]
        for d, k in gathers:
            prog += [("wait", tid("gather", d, master, k), "gather"),
                     ("cpu", packed_s("gather", d, master, k), "gather")]
        if plan.exchange == "master":
            prog.append(("wait", scatter, "scatter"))
        return prog
    w = tid("weights", master, r)
    prog = [("post", w, "recv"), ("wait", w, "weights")]
    if plan.exchange == "master":
        s = [tid("scatter", master, r, k) for k in range(len(parts[r]))]
        prog.append(("post", [i for ik in s for i in ik], "recv"))
        sent = []
        for k, st in enumerate(parts[r]):
            g = tid("gather", r, master, k)
            prog += [("wait", s[k], "scatter"), ("cpu", compute_s(st), "compute"), ("post", g, "send")]
            sent += g
        return prog + [("wait", sent, "gather")]
    s = tid("scatter", master, r)
    g = tid("gather", r, master)
    return prog + [("post", s, "recv"), ("wait", s, "scatter"), ("post", halo_out, "send"), ("post", halo_in, "recv"),
                   ("wait", halo_out + halo_in, "halo"), ("cpu", compute_s(tile), "compute"),
                   ("post", g, "send"), ("wait", g, "gather")]


def _run(programs: dict[int, list[Step]], transfers: list[_Transfer], cores) -> Timeline:
    """Event by event: ranks run their programs until they block; posted messages move, in
    order between each pair of ranks; every busy thread advances at its processor share.

    Each event revisits only what it can change (the ranks whose wait or compute ended, the
    queues whose head finished or was posted), so the simulation costs about the events
    times what moves at once, not the events times every rank and message."""
    pc = dict.fromkeys(programs, 0)
    cpu_left: dict[int, float] = {}  # rank -> seconds of its current cpu step still to run
    began: dict[int, float] = {}  # rank -> when its current blocking step began
    out = Timeline({r: dict.fromkeys(PHASES, 0.0) for r in programs})
    reference = reference_share(cores)
    now = 0.0
    # a pair's messages of one tag arrive in the order they were posted: one queue per
    # (src, dst, phase), in transfer order; only a queue's head may move
    queues: dict[tuple, list[int]] = defaultdict(list)
    for i, t in enumerate(transfers):
        t.left = t.seconds
        queues[(t.src, t.dst, t.phase)].append(i)
    heads = dict.fromkeys(queues, 0)
    waiters: dict[int, list[int]] = defaultdict(list)  # transfer -> ranks blocked on it
    moving: dict[int, _Transfer] = {}  # transfer id -> transfer, for those on their way
    ready = list(programs)  # ranks that may run on now

    def start_head(key) -> None:
        h = heads[key]
        q = queues[key]
        if h < len(q):
            t = transfers[q[h]]
            if t.state == 0 and t.sent and t.received:
                t.state = 1
                moving[q[h]] = t

    while True:
        touched = set()
        for r in ready:  # run each rank until it blocks
            prog = programs[r]
            while pc[r] < len(prog):
                kind, what, arg = prog[pc[r]]
                if kind == "post":
                    for i in what:
                        setattr(transfers[i], "sent" if arg == "send" else "received", True)
                        t = transfers[i]
                        touched.add((t.src, t.dst, t.phase))
                elif kind == "wait":
                    pending = [i for i in what if transfers[i].state != 2]
                    if pending:
                        began.setdefault(r, now)
                        waiters[pending[0]].append(r)
                        break
                    out.seconds[r][arg] += now - began.pop(r, now)
                elif r not in cpu_left:
                    if what > 0:
                        cpu_left[r] = what
                        began[r] = now
                        break
                elif cpu_left[r] > 0:
                    break
                else:
                    del cpu_left[r]
                    out.seconds[r][arg] += now - began.pop(r)
                pc[r] += 1
        for key in touched:
            start_head(key)
        computing = [r for r, left in cpu_left.items() if left > 0]
        ends: dict[int, int] = defaultdict(int)  # rank -> messages its communication thread moves
        for t in moving.values():
            ends[t.src] += 1
            ends[t.dst] += 1
        threads = len(computing) + len(ends)  # a rank computes on one thread, moves data on another
        if threads == 0:
            if any(pc[r] < len(p) for r, p in programs.items()):
                raise AssertionError("schedule deadlocked: the programs do not match")  # a bug, not bad input
            out.makespan = now
            return out
        share = min(1.0, cores(threads) / threads)
        # each transfer advances on its own: the order they are visited in changes no time
        rates = [(i, t, min(1.0, share / max(ends[t.src], ends[t.dst]) / reference)) for i, t in moving.items()]
        dt = min([t.left / v for _, t, v in rates] + [cpu_left[r] / share for r in computing])
        now += dt
        ready = []
        for i, t, v in rates:
            t.left -= dt * v
            if t.left <= 1e-15:
                t.state = 2
                del moving[i]
                key = (t.src, t.dst, t.phase)
                heads[key] += 1
                start_head(key)
                ready += waiters.pop(i, [])
        for r in computing:
            cpu_left[r] = max(0.0, cpu_left[r] - dt * share)
            if cpu_left[r] == 0.0:
                ready.append(r)
        ready = list(dict.fromkeys(ready))
