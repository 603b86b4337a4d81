"""A worker process of a LocalCluster (started by LocalCluster, never by hand)."""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from haloconv.compute import kernels
from haloconv.engines.host import peak_rss, set_name
from haloconv.engines.processes.sealed import Forged, read_secret, seal, unseal
from haloconv.engines.spmd import steps as spmd
from haloconv.engines.spmd.comm import Comm

HOST = "127.0.0.1"
IDLE = timedelta(days=3650)  # how long an idle worker waits for its next command
FORGED_PAUSE_S = 0.05  # after a forged command: the master's own replaces it under the same key


def keep_heap() -> bool:
    """This process keeps freed blocks in its heap (no unmapping, no trimming), like the
    workers (processes._worker_env): a tile-sized buffer allocated again reuses warm pages
    instead of faulting in fresh zeroed ones, so the master of a LocalCluster computes its
    tiles as fast as a worker does.  Freed memory then stays resident (the peak does not grow).
    HALOCONV_KEEP_HEAP=0 opts out.  Returns whether it took effect (glibc only)."""
    if os.environ.get("HALOCONV_KEEP_HEAP", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - not glibc
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # noqa: N806 - glibc's names
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def worker_main(rank: int, world: int, port: int, timeout: float, threads: int, start_timeout: float,
                seq: int = 0, generation: int = 0) -> None:
    """Serve commands from number ``seq`` on, in the group of ``generation``.  A command that
    raises is answered with the traceback, and this process's connections are closed (every
    peer waiting on it fails at once); it then waits for the master's 'regroup'."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: die at once, the master cleans up
    set_name(f"haloconv-w{rank}")  # in ps and top: which rank (forked from the server or spawned)
    secret = read_secret(0)  # from the master, through the pipe on stdin (engines/processes/sealed.py)
    torch.set_num_threads(threads)
    store = dist.TCPStore(HOST, port, world, False, timedelta(seconds=start_timeout))
    comm: Comm | None = _join(store, rank, world, timeout, start_timeout, generation)
    shards: dict[int, torch.Tensor | None] = {}  # resident shards, by id
    raise_next = False  # a fault injected by a test
    try:
        while True:
            # commands come through the store: an idle worker waits without a timeout, and
            # the store (served by the master) vanishing ends the wait with an error
            key = f"haloconv/cmd/{rank}/{seq}"
            cmd = _next_command(store, key, secret)
            seq += 1
            op = cmd["op"]
            if op == "stop":
                break
            if op == "regroup":  # after a failed step: a new group, the old one's state dropped
                shutdown(comm)
                shards.clear()
                comm = _join(store, rank, world, timeout, start_timeout, cmd["generation"])
                continue
            if op == "fault":  # for tests: die, hang or raise on request
                if cmd["kind"] == "exit":
                    os._exit(3)
                raise_next = cmd["kind"] == "raise"  # the next step raises in this worker
                if raise_next:
                    continue
                time.sleep(cmd.get("seconds", 3600))
                continue
            try:
                if comm is None:
                    raise RuntimeError("haloconv: broken group (a previous step failed)")
                if raise_next:
                    raise_next = False
                    raise RuntimeError("fault injected: this worker raised on request (LocalCluster.inject_fault)")
                report = _run(comm, cmd, shards)
            except Exception as e:  # noqa: BLE001 - answered to the master, which raises it
                report = {"rank": rank, "error": traceback.format_exc()}
                traceback.clear_frames(e.__traceback__)  # its frames' in-flight messages hold the group
                shutdown(comm)
                comm = None
            reply = f"haloconv/report/{rank}/{seq - 1}"
            store.set(reply, seal(secret, reply, report))
    except Exception:
        store.set(f"haloconv/error/{rank}", seal(secret, f"haloconv/error/{rank}", traceback.format_exc()))
        os._exit(1)


def _next_command(store, key: str, secret: bytes) -> dict:
    """The command the master posted under ``key``.  A value there that the cluster's secret
    did not seal is dropped unread (logged once) and the wait goes on: the master's own
    command replaces it under the same key."""
    said = False
    while True:
        store.wait([key], IDLE)
        data = store.get(key)
        try:
            cmd = unseal(secret, key, data)
        except Forged as e:
            if not said:  # a worker has no log handler of its own: its stderr is the master's
                print(f"haloconv: warning: a worker dropped {e} (not sent by this cluster's master)",
                      file=sys.stderr, flush=True)
                said = True
            time.sleep(FORGED_PAUSE_S)
            continue
        store.delete_key(key)
        return cmd


def _join(store, rank: int, world: int, timeout: float, start_timeout: float, generation: int) -> Comm:
    """Say this worker is ready, wait until every rank of ``generation`` is (a replaced one
    is still importing torch), then form the group."""
    store.set(f"haloconv/ready/{rank}/{generation}", "1")
    store.wait([f"haloconv/ready/{r}/{generation}" for r in range(1, world)], timedelta(seconds=start_timeout))
    comm = Comm(group_of(store, rank, world, timeout, generation), rank, world)
    # the master's end of the group is formed once every rank has connected to it, the
    # workers' ends once they have connected to each other: the master waits for this key
    # so that no step starts (and no test kills a worker) while a pair is still connecting
    store.set(f"haloconv/joined/{rank}/{generation}", "1")
    return comm


def group_of(store, rank: int, world: int, timeout: float, generation: int):
    """This rank's end of a LocalCluster's gloo group of ``generation`` (a group is never
    reused after a failure: every healing forms a new one, under its own key prefix)."""
    return dist.ProcessGroupGloo(dist.PrefixStore(f"haloconv/g{generation}/", store), rank, world,
                                 timedelta(seconds=timeout))


def shutdown(comm: Comm | None) -> None:
    """Close this process's connections in ``comm``'s group: a peer blocked on one of them
    fails at once (instead of at the group's timeout).  gloo closes them when the group
    object is destroyed, so ``comm`` lets go of it (nothing else may hold it)."""
    if comm is None or comm.pg is None:
        return
    comm.pg = None
    gc.collect()  # a reference cycle (a traceback's frames) may still hold it


# The worker halves of the operations, by name.  Each operation (engines/processes/ops/, stream)
# registers its half with @worker_op and names its module in the command ("module"): the
# worker imports it on first use, so this module imports no engine built above it.
OPS: dict[str, Callable[[Comm, dict, dict], dict | None]] = {}


def worker_op(name: str):
    """Register ``fn(comm, cmd, shards) -> extra report fields | None`` as operation ``name``."""
    def register(fn):
        OPS[name] = fn
        return fn
    return register


def _run(comm: Comm, cmd: dict, shards: dict) -> dict:
    """One collective step, mirrored by the master (see LocalCluster)."""
    op = cmd["op"]
    if op not in OPS and "module" in cmd:
        importlib.import_module(cmd["module"])
    if op not in OPS:
        raise ValueError(f"unknown command {op!r}")
    comm.reset()
    comm.slowdown = cmd.get("throttle", {}).get(comm.rank, 1.0)
    t0 = time.perf_counter()
    extra = OPS[op](comm, cmd, shards) or {}
    return {"rank": comm.rank, "traffic": comm.report(), "seconds": time.perf_counter() - t0,
            "peak_rss": peak_rss(), **extra}


def tile_weights(comm: Comm, cmd: dict):
    """(this rank's filters, bias, torch conv backend) of a command that sends them."""
    w, b = spmd.distribute_weights(comm, cmd["plan"], None, None, cmd["dtype"])
    return w, b, kernels.backend_of(cmd["torch_backend"])
