"""A worker process of a LocalCluster (started by LocalCluster, never by hand)."""

from __future__ import annotations

import ctypes
import os
import pickle
import resource
import signal
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from haloconv.engines import spmd
from haloconv.engines.comm import Comm

HOST = "127.0.0.1"
IDLE = timedelta(days=3650)  # how long an idle worker waits for its next command
_BACKENDS = torch._C._ConvBackend


class WorkerError(RuntimeError):
    """A worker process died, hung past the timeout, or raised.  ``dead``: the ranks that exited."""

    def __init__(self, message: str, dead: tuple[int, ...] = ()):
        super().__init__(message)
        self.dead = tuple(dead)


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker if the master dies (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux
        pass


def keep_heap() -> bool:
    """This process keeps freed blocks in its heap (no unmapping, no trimming), like the
    workers (processes._worker_env): a tile-sized buffer allocated again reuses warm pages
    instead of faulting in fresh zeroed ones.  On the master of a LocalCluster this made
    its tiles as fast as a worker's (1x32x1536^2 3x3, 16 tiles: 0.07 -> 0.045 s a tile; it
    was 2x a worker's).  Freed memory then stays resident (the peak does not grow).
    HALOCONV_KEEP_HEAP=0 opts out.  Returns whether it took effect (glibc only)."""
    if os.environ.get("HALOCONV_KEEP_HEAP", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - not glibc
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # noqa: N806 - glibc's names
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def worker_main(rank: int, world: int, port: int, timeout: float, threads: int, start_timeout: float) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: die at once, the master cleans up
    torch.set_num_threads(threads)
    store = dist.TCPStore(HOST, port, world, False, timedelta(seconds=start_timeout))
    store.set(f"haloconv/ready/{rank}", "1")
    pg = dist.ProcessGroupGloo(store, rank, world, timedelta(seconds=timeout))
    comm = Comm(pg, rank, world)
    shards: dict[int, torch.Tensor | None] = {}  # resident shards, by id
    try:
        seq = 0
        while True:
            # commands come through the store: an idle worker waits without a timeout, and
            # the store (served by the master) vanishing ends the wait with an error
            key = f"haloconv/cmd/{rank}/{seq}"
            store.wait([key], IDLE)
            cmd = pickle.loads(store.get(key))
            store.delete_key(key)
            seq += 1
            op = cmd["op"]
            if op == "stop":
                break
            if op == "fault":  # for tests: die or hang on request
                if cmd["kind"] == "exit":
                    os._exit(3)
                time.sleep(cmd.get("seconds", 3600))
                continue
            report = _run(comm, cmd, shards)
            store.set(f"haloconv/report/{rank}/{seq - 1}", pickle.dumps(report))
    except Exception:
        store.set(f"haloconv/error/{rank}", traceback.format_exc())
        os._exit(1)


def _run(comm: Comm, cmd: dict, shards: dict) -> dict:
    """One collective step, mirrored by the master (see LocalCluster)."""
    op, plan = cmd["op"], cmd.get("plan")
    extra: dict = {}
    comm.reset()
    comm.slowdown = cmd.get("throttle", {}).get(comm.rank, 1.0)
    t0 = time.perf_counter()
    if op in ("conv", "layer"):
        w, b = spmd.distribute_weights(comm, plan, None, None, cmd["dtype"])
        backend = getattr(_BACKENDS, cmd["backend"])
    if op == "conv":
        if plan.exchange == "master":  # part by part: compute while the rest arrives
            spmd.windows_compute_gather(comm, plan, w, b, backend)
        else:
            window = spmd.halo_exchange(comm, plan, spmd.scatter(comm, plan, None))
            spmd.gather(comm, plan, spmd.compute(comm, plan, window, w, b, backend))
    elif op == "dynamic":
        w, b = spmd.broadcast_weights(comm, plan, None, None, cmd["dtype"])
        spmd.dynamic_worker(comm, plan, w, b, getattr(_BACKENDS, cmd["backend"]), cmd["dtype"])
    elif op == "stream":
        from haloconv.engines import stream  # imports processes, which imports this module

        extra = stream.worker_loop(comm, cmd["job"], getattr(_BACKENDS, cmd["backend"]))
    elif op == "probe":
        best, total = spmd.probe(comm, cmd["spec"], cmd["dtype"], cmd["backend"], cmd["repeat"], cmd.get("busy"),
                                 cmd.get("torch_backend"))
        extra = {"probe_seconds": best, "probe_total": total}
    elif op == "scatter":
        shards[cmd["id"]] = spmd.scatter(comm, plan, None)
    elif op == "layer":
        window = spmd.halo_exchange(comm, plan, shards[cmd["src"]])
        shards[cmd["dst"]] = spmd.compute(comm, plan, window, w, b, backend)
    elif op == "gather":
        spmd.gather(comm, plan, shards[cmd["id"]])
    elif op == "free":
        for i in cmd["ids"]:
            shards.pop(i, None)
    else:
        raise ValueError(f"unknown command {op!r}")
    return {"rank": comm.rank, "traffic": comm.report(), "seconds": time.perf_counter() - t0,
            "peak_rss": peak_rss(), **extra}


def peak_rss() -> int:
    """This process's peak resident memory so far, bytes: VmHWM (getrusage's ru_maxrss
    would carry the parent's peak across fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
