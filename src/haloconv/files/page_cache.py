"""Whether a file's pages lie in the page cache, asked without reading them: mincore(2) on a
map of each page asked about.  A read cannot ask: even one that may not wait (RWF_NOWAIT)
starts read-ahead of what it misses, filling the cache it asks about.  Linux and FreeBSD;
elsewhere no page is known to be cached.  files/arrays.py reads an input around the cache
(O_DIRECT) only where the disk would be read anyway."""

from __future__ import annotations

import mmap
import sys

_libc: object = None  # None: not loaded yet; False: no mincore here


def _load():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith(("linux", "freebsd")):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if hasattr(libc, "mincore"):
                libc.mmap.restype = ctypes.c_void_p
                libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_long]
                libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
                libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
                _libc = libc
    return _libc or None


def cached(fd: int, offsets) -> bool:
    """Whether the page holding each byte offset in ``offsets`` of the open file ``fd`` is in
    the page cache (False where that cannot be told)."""
    libc = _load()
    if libc is None:
        return False
    import ctypes

    page, flag = mmap.PAGESIZE, ctypes.create_string_buffer(1)
    for at in offsets:
        addr = libc.mmap(None, page, mmap.PROT_READ, mmap.MAP_SHARED, fd, at - at % page)
        if addr in (None, ctypes.c_void_p(-1).value):  # MAP_FAILED
            return False
        try:
            if libc.mincore(addr, page, flag) != 0 or not flag.raw[0] & 1:
                return False
        finally:
            libc.munmap(addr, page)
    return True
