"""Facts of this host read from the OS: the cores this process may use, /proc readers
(resident memory, peaks, child processes) used by the engines, the CLI and the tests."""

from __future__ import annotations

import math
import mmap
import os
import resource
import threading
import weakref
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


FORK_SERVER_NAME = "haloconv-fork"  # the fork server's name in ps and /proc/PID/comm (engines/processes/forkserver.py)
WORKER_NAME = "haloconv-worker"  # a worker's: the ones it forks take their own


def set_name(name: str) -> None:
    """This process's name as ps and /proc/PID/comm show it (Linux; 15 bytes at most)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def is_fork_server(pid: int) -> bool:
    """Whether process ``pid`` is a haloconv fork server (engines/processes/forkserver.py)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == FORK_SERVER_NAME
    except OSError:
        return False


def workers_of(pid: int | None = None) -> list[int]:
    """``children(pid)`` less the fork server: the worker processes of a master."""
    return [k for k in children(pid) if not is_fork_server(k)]


# below this, numpy's own allocation (small arrays come from its heap, not fresh pages)
SMALL_PAGES_FROM = 1 << 22
# the advice each page kind is asked for (None where this Python's mmap has no such advice)
ADVICE = {"huge": getattr(mmap, "MADV_HUGEPAGE", None), "ordinary": getattr(mmap, "MADV_NOHUGEPAGE", None)}


def _mapping(nbytes: int, advice: int | None) -> np.ndarray:
    """A private anonymous mapping with ``advice``: given back to the kernel when the array
    goes (unlike the C heap, which keeps what a long-running process frees), and private
    (a shared one is shmem, which THP's ``shmem_enabled``, not its advice, governs).
    Mappings up to REUSED_UP_TO are kept for the next result of their size instead
    (_give_back)."""
    with _kept_lock:
        kept = _kept.get(nbytes)
        m = kept.pop() if kept else None
    if m is None:
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if advice is not None:
            try:
                m.madvise(advice)
            except OSError:  # pragma: no cover - a kernel without THP
                pass
    root = np.frombuffer(m, np.uint8)
    if nbytes <= REUSED_UP_TO:
        weakref.finalize(root, _give_back, m).atexit = False  # the root goes once every view of it has
    return root


# A result of a few MiB is written in about the time its fresh pages take to fault in, and
# a caller filtering many images of one size frees one result as it asks for the next:
# mappings up to REUSED_UP_TO are kept, KEPT_BYTES in all, for the next result of their
# size (as glibc's heap keeps what numpy frees below its mmap threshold, 32 MiB at most),
# bounded so a long-running process does not hold freed memory.
REUSED_UP_TO = 32 << 20
KEPT_BYTES = 64 << 20
_kept: dict[int, list[mmap.mmap]] = {}
_kept_lock = threading.Lock()


def _forget_kept() -> None:  # a forked child: the lock may have been held by a thread it lacks
    global _kept_lock
    _kept_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_kept)


def _give_back(m: mmap.mmap) -> None:
    """The array over ``m`` is gone: keep ``m`` for the next result of its size while the
    kept mappings stay under KEPT_BYTES, else let it go (unmapped once the array's hold on
    it, released just after this runs, is gone)."""
    with _kept_lock:
        if sum(n * len(ms) for n, ms in _kept.items()) + len(m) <= KEPT_BYTES:
            _kept.setdefault(len(m), []).append(m)


def free_huge_bytes() -> int | None:
    """Bytes the kernel holds free in blocks of a huge page or more (/proc/buddyinfo, every
    zone): what huge pages can be faulted in from without compacting memory.  None where
    transparent huge pages are off or the files are not there (not Linux)."""
    try:
        if "[never]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text():
            return None
        huge = int(Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size").read_text())
        lines = Path("/proc/buddyinfo").read_text().splitlines()
    except (OSError, ValueError):
        return None
    return free_in_blocks(lines, (huge // mmap.PAGESIZE).bit_length() - 1, mmap.PAGESIZE)


def free_in_blocks(buddyinfo: list[str], order: int, page: int) -> int:
    """Bytes free in blocks of 2^``order`` pages or more, from /proc/buddyinfo's lines
    ("Node 0, zone Normal" then the count of free blocks of order 0, 1, 2, ...)."""
    return sum(int(c) << k for line in buddyinfo for k, c in enumerate(line.split()[4:]) if k >= order) * page


def page_kind(nbytes: int) -> str:
    """'huge' or 'ordinary': the pages a fresh result of ``nbytes`` goes on
    (``HALOCONV_PAGES`` names one instead).

    Huge pages fault 512 times fewer pages in: where the kernel has free huge-page blocks, a
    fresh result on them costs a fraction of ordinary pages' first touch.  Where it has not
    (memory fragmented, a big page cache), the first touch of memory advised for huge pages
    compacts memory synchronously (THP defrag 'madvise') and costs more than the filter that
    writes it.  Which holds is the host's state at the call, so it is read at the call: huge
    pages while the free huge-page blocks (/proc/buddyinfo) hold twice the result.  Either
    way the result is a mapping of its own, given back when it goes."""
    forced = os.environ.get("HALOCONV_PAGES", "")
    if forced in ("huge", "ordinary"):
        return forced
    free = free_huge_bytes()
    return "huge" if free is not None and free >= 2 * nbytes else "ordinary"


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised array for a large result, on the pages its first touch costs least
    on now (page_kind): a fresh result is written once, by the filter, so its page faults
    are part of the call's time."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < SMALL_PAGES_FROM:
        return np.empty(shape, dtype)
    return _mapping(nbytes, ADVICE[page_kind(nbytes)]).view(dtype).reshape(shape)
