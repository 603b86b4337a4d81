"""A worker process of a LocalCluster (started by LocalCluster, never by hand)."""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from haloconv.engines import spmd
from haloconv.engines.comm import Comm
from haloconv.plan import Plan

HOST = "127.0.0.1"
IDLE = timedelta(days=3650)  # how long an idle worker waits for its next command
_BACKENDS = torch._C._ConvBackend


class WorkerError(RuntimeError):
    """A worker process died, hung past the timeout, or raised."""


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker if the master dies (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux
        pass


def worker_main(rank: int, world: int, port: int, timeout: float, threads: int, start_timeout: float) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: die at once, the master cleans up
    torch.set_num_threads(threads)
    store = dist.TCPStore(HOST, port, world, False, timedelta(seconds=start_timeout))
    store.set(f"haloconv/ready/{rank}", "1")
    pg = dist.ProcessGroupGloo(store, rank, world, timedelta(seconds=timeout))
    comm = Comm(pg, rank, world)
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
            if op == "conv":
                report = _worker_conv(comm, cmd)
                store.set(f"haloconv/report/{rank}/{seq - 1}", pickle.dumps(report))
    except Exception:
        store.set(f"haloconv/error/{rank}", traceback.format_exc())
        os._exit(1)


def _worker_conv(comm: Comm, cmd: dict) -> dict:
    plan: Plan = cmd["plan"]
    comm.reset()
    t0 = time.perf_counter()
    tile = plan.tile_of(comm.rank)
    weight = bias = None
    if tile is not None:
        c0, c1 = plan.weight_box(tile)
        dtype = cmd["dtype"]
        with comm.phase("weights"):
            weight = torch.empty((c1 - c0, *plan.spec.weight_shape[1:]), dtype=dtype)
            works = [comm.irecv(weight, 0, "weights")]
            if plan.spec.has_bias:
                bias = torch.empty(c1 - c0, dtype=dtype)
                works.append(comm.irecv(bias, 0, "weights"))
            comm.wait(works)
    backend = getattr(_BACKENDS, cmd["backend"])
    if plan.exchange == "master":
        window = spmd.scatter_windows(comm, plan, None)
    else:
        window = spmd.halo_exchange(comm, plan, spmd.scatter(comm, plan, None))
    y = spmd.compute(comm, plan, window, weight, bias, backend) if tile is not None else None
    spmd.gather(comm, plan, y)
    return {"rank": comm.rank, "traffic": comm.report(), "seconds": time.perf_counter() - t0}


