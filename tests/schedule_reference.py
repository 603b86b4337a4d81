"""A reference for tests/test_cost.py: the processes schedule simulated the simple way."""

from collections import defaultdict

from haloconv.costmodel.schedule import Timeline
from haloconv.tiling.messages import PHASES


def naive_run(programs, transfers, cores):
    """The schedule's first simulator, kept as the reference of costmodel/schedule._run: at every
    event it runs every rank until it blocks and scans every message (simple, and quadratic
    in the ranks)."""
    pc = dict.fromkeys(programs, 0)
    cpu_left: dict[int, float] = {}  # rank -> seconds of its current cpu step still to run
    began: dict[int, float] = {}  # rank -> when its current blocking step began
    out = Timeline({r: dict.fromkeys(PHASES, 0.0) for r in programs})
    # a message's time alone was measured (calibrate) with its two ends busy on their own
    reference = min(1.0, cores(2) / 2)
    now = 0.0
    for t in transfers:
        t.left = t.seconds
    while True:
        for r, prog in programs.items():  # run each rank until it blocks
            while pc[r] < len(prog):
                kind, what, arg = prog[pc[r]]
                if kind == "post":
                    for i in what:
                        setattr(transfers[i], "sent" if arg == "send" else "received", True)
                elif kind == "wait":
                    if any(transfers[i].state != 2 for i in what):
                        began.setdefault(r, now)
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
        queued = set()  # a pair's messages of one tag arrive in the order they were posted
        for t in transfers:
            if t.state == 2:
                continue
            key = (t.src, t.dst, t.phase)
            if t.state == 0 and t.sent and t.received and key not in queued:
                t.state = 1
            queued.add(key)
        moving = [t for t in transfers if t.state == 1]
        computing = [r for r, left in cpu_left.items() if left > 0]
        ends: dict[int, int] = defaultdict(int)  # rank -> messages its communication thread moves
        for t in moving:
            ends[t.src] += 1
            ends[t.dst] += 1
        threads = len(computing) + len(ends)  # a rank computes on one thread, moves data on another
        if threads == 0:
            if any(pc[r] < len(p) for r, p in programs.items()):
                raise AssertionError("schedule deadlocked: the programs do not match")  # a bug, not bad input
            out.makespan = now
            return out
        share = min(1.0, cores(threads) / threads)
        rates = [min(1.0, share / max(ends[t.src], ends[t.dst]) / reference) for t in moving]
        dt = min([t.left / v for t, v in zip(moving, rates)] + [cpu_left[r] / share for r in computing])
        now += dt
        for t, v in zip(moving, rates):
            t.left -= dt * v
            if t.left <= 1e-15:
                t.state = 2
        for r in computing:
            cpu_left[r] = max(0.0, cpu_left[r] - dt * share)
