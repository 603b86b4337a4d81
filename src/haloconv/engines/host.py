"""Facts of this host read from the OS: the cores this process may use, /proc readers
(resident memory, peaks, child processes) used by the engines, the CLI and the tests."""

from __future__ import annotations

import math
import mmap
import os
import resource
from pathlib import Path

import numpy as np


def die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this process (SIGKILL) when the process ``parent`` dies, so a
    worker never outlives its master.  The death signal only covers a parent alive when it
    is set: a master that died before (while this process started) is seen here, and this
    process exits at once instead of waiting for a store that is gone."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:
        os._exit(1)


def default_workers() -> int:
    """The cores this process may use (its CPU affinity): the default worker count.

    Returns
    -------
    int

    Examples
    --------
    >>> import os, haloconv
    >>> haloconv.default_workers() == len(os.sched_getaffinity(0))
    True
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def peak_rss() -> int:
    """This process's peak resident memory so far, bytes: VmHWM (getrusage's ru_maxrss
    would carry the parent's peak across fork + exec)."""
    try:
        return int(proc_status("self", "VmHWM").split()[0]) * 1024
    except (OSError, KeyError):  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def proc_status(pid: int | str, field: str) -> str:
    """The value of ``field`` in /proc/PID/status (KeyError when absent)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(field)


def proc_mb(pid: int | str, field: str = "VmRSS") -> float:
    """A memory field of /proc/PID/status in MB (VmRSS now, VmHWM the high-water mark)."""
    return float(proc_status(pid, field).split()[0]) / 1024


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return not proc_status(pid, "State").startswith("Z")
    except (OSError, KeyError):
        return False


def children(pid: int | None = None) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int(proc_status(d.name, "PPid")) == pid and alive(int(d.name)):
                    kids.append(int(d.name))
            except (OSError, KeyError, ValueError):
                continue
    return kids


FORK_SERVER_NAME = "haloconv-fork"  # the fork server's name in ps and /proc/PID/comm (engines/forkserver.py)
WORKER_NAME = "haloconv-worker"  # a worker's: the ones it forks take their own


def set_name(name: str) -> None:
    """This process's name as ps and /proc/PID/comm show it (Linux; 15 bytes at most)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def is_fork_server(pid: int) -> bool:
    """Whether process ``pid`` is a haloconv fork server (engines/forkserver.py)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == FORK_SERVER_NAME
    except OSError:
        return False


def workers_of(pid: int | None = None) -> list[int]:
    """``children(pid)`` less the fork server: the worker processes of a master."""
    return [k for k in children(pid) if not is_fork_server(k)]


# below this, numpy's own allocation (small arrays come from its heap, not fresh pages)
SMALL_PAGES_FROM = 1 << 22
# what page_kind() times: each kind's first touch of this many bytes, best of PROBE_ROUNDS
PROBE_BYTES = 16 << 20
PROBE_ROUNDS = 3
_PAGES: list[str] = []  # the probe's answer, once per process


def _huge(nbytes: int) -> np.ndarray:
    """numpy's own: large arrays come with the transparent-huge-page advice (madvise)."""
    return np.empty(nbytes, np.uint8)


def _ordinary(nbytes: int) -> np.ndarray:
    """An anonymous mapping without the advice: ordinary pages, whatever THP is set to."""
    return np.frombuffer(mmap.mmap(-1, nbytes), np.uint8)


def page_kind() -> str:
    """'huge' or 'ordinary': the pages a large result is allocated on, whichever this host
    first-touches faster, measured once per process (``HALOCONV_PAGES`` names one instead).

    Huge pages fault 512 times fewer pages in, so where the kernel has free huge pages a
    fresh result costs a fraction of ordinary pages' first touch; where memory is fragmented
    and THP's defrag is 'madvise', the first touch of an advised mapping compacts memory
    synchronously and costs more than the filter that writes it.  Which of the two holds is
    the host's current state, not a property of its name, so it is timed: each kind's first
    touch of PROBE_BYTES, interleaved, best of PROBE_ROUNDS."""
    if not _PAGES:
        forced = os.environ.get("HALOCONV_PAGES", "")
        if forced in ("huge", "ordinary"):
            _PAGES.append(forced)
        else:
            import time

            best = {"huge": math.inf, "ordinary": math.inf}
            for _ in range(PROBE_ROUNDS):
                for kind, alloc in (("huge", _huge), ("ordinary", _ordinary)):
                    t0 = time.perf_counter()
                    alloc(PROBE_BYTES).fill(1)
                    best[kind] = min(best[kind], time.perf_counter() - t0)
            _PAGES.append("huge" if best["huge"] < best["ordinary"] else "ordinary")
    return _PAGES[0]


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised array for a large result, on the pages this host first-touches
    faster (page_kind): a fresh result is written once, by the filter, so its page faults
    are part of the call's time."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < SMALL_PAGES_FROM:
        return np.empty(shape, dtype)
    buf = _huge(nbytes) if page_kind() == "huge" else _ordinary(nbytes)
    return buf.view(dtype).reshape(shape)
