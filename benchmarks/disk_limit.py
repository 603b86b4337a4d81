"""The disk's own limit for a streamed run, and inputs out of the page cache: what
benchmarks/out_of_core_peers.py measures haloconv's out-of-core runs against.

A streamed run reads its input and writes its output at once (the reader thread runs ahead
while the writer writes behind), so its limit is neither a copy (`cp` and `dd` read, then
write, in turn) nor either bandwidth alone: it is the time the disk takes to read the input's
bytes and write as many, concurrently — one thread reading, one writing, each around the
page cache (O_DIRECT) in 8 MiB requests, the input dropped from the cache first.  Linux only
(O_DIRECT, posix_fadvise); not a test."""

from __future__ import annotations

import mmap
import os
import threading
import time

REQUEST = 8 << 20  # bytes per direct request
ALIGN = 4096


def drop_cache(path) -> None:
    """``path``'s pages out of the page cache (written back first), so that a run reads it from
    the disk as an input a user has not just touched."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read(path, nbytes: int) -> None:
    fd, buf = os.open(path, os.O_RDONLY | os.O_DIRECT), mmap.mmap(-1, REQUEST)
    view, at = memoryview(buf), 0
    try:
        while at < nbytes:
            n = os.preadv(fd, [view[:min(REQUEST, nbytes - at)]], at)
            if n <= 0:
                break
            at += n
    finally:
        os.close(fd)


def _write(path, nbytes: int) -> None:
    fd, buf = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644), mmap.mmap(-1, REQUEST)
    view, at = memoryview(buf), 0
    try:
        while at < nbytes:
            at += os.pwrite(fd, view[:min(REQUEST, nbytes - at)], at)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def limit(src, scratch, repeat: int = 2) -> dict[str, float]:
    """Best of ``repeat`` seconds to read ``src`` (cold), to write as many bytes to the file
    ``scratch`` (removed after), and to do both at once: {'read', 'write', 'both'}."""
    nbytes = os.path.getsize(src) // ALIGN * ALIGN
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name in ("read", "write", "both"):
            drop_cache(src)
            jobs = {"read": [(_read, src)], "write": [(_write, scratch)],
                    "both": [(_read, src), (_write, scratch)]}[name]
            threads = [threading.Thread(target=f, args=(p, nbytes)) for f, p in jobs]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
            if os.path.exists(scratch):
                os.unlink(scratch)
    return best
