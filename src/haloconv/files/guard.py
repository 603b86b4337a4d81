"""What haloconv may replace or remove, and what it checks before it writes anything.

A tool for big images must never destroy what it did not create.  So every removal or
replacement of a path in haloconv goes through ``remove_own`` / ``check_replaceable``:
a regular file (or a symlink to one: the link is replaced, not its target), or a .zarr
store that haloconv wrote (it marks its stores: ``MARK`` in the array's attributes).  A
directory, a symlink to one, a FIFO, a device or a socket is refused with a ValueError
naming it, untouched.  Before a run creates anything: the output's folder exists and is
writable, the file system has room for the output (``os.statvfs``), and the optional
libraries the output needs import.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

MARK = "haloconv"  # the key haloconv writes into the attributes of every .zarr store it makes
# room kept free beyond an output's bytes (its header, a file system's own blocks, the
# journal): 1% of them, and 1 MiB at least
SPACE_MARGIN_SHARE, SPACE_MARGIN_MIN = 0.01, 1 << 20


def describe(path: Path) -> str | None:
    """What is at ``path`` in words ('a regular file', 'a directory', ...), None when nothing is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(path)
        except OSError:
            return "a broken symlink"
        return "a symlink to a regular file" if stat.S_ISREG(target.st_mode) else \
            f"a symlink to {_kind(target.st_mode)}"
    return _kind(st.st_mode)


def _kind(mode: int) -> str:
    for test, words in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "a special file"


def is_own_zarr(path: Path) -> bool:
    """``path`` is a .zarr store haloconv wrote: a real folder (not a symlink) whose zarr.json
    carries haloconv's mark."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and MARK in (meta.get("attributes") or {})


def check_replaceable(path: Path, flag: str = "--overwrite") -> None:
    """ValueError unless what is at ``path`` (if anything) may be replaced: a regular file, a
    symlink to one, or a .zarr store haloconv wrote."""
    path = Path(path)
    what = describe(path)
    if what is None or what in ("a regular file", "a symlink to a regular file", "a broken symlink"):
        return
    if what == "a directory" and is_own_zarr(path):
        return
    extra = " that haloconv did not write (no haloconv mark in its zarr.json)" \
        if what == "a directory" and path.suffix.lower() == ".zarr" else ""
    raise ValueError(f"{str(path)!r} is {what}{extra}: haloconv replaces only files (and .zarr stores) it wrote; "
                     f"{flag} does not apply — remove or rename it yourself, or choose another output")


def remove_own(path: Path) -> None:
    """Remove ``path`` if check_replaceable allows it (nothing there: nothing done)."""
    path = Path(path)
    check_replaceable(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif describe(path) is not None:
        path.unlink()


def temporary(path: Path) -> Path:
    """A fresh name beside ``path`` to write it under until it is whole (refused when
    something is there already: it is not this run's to remove)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    if describe(tmp) is not None:
        raise ValueError(f"{str(tmp)!r} is in the way (a temporary of another run?): remove it to write {str(path)!r}")
    return tmp


def write_whole(path: Path, write, sync: bool = False) -> Path:
    """Write a file at ``path`` by ``write(tmp)`` into a fresh name beside it, renamed into
    place: whole or not at all, replacing only what check_replaceable allows (a report, a
    plot, a profile the user names, a journal, a receipt: a folder, FIFO or device there is
    refused, never written into).  ``sync``: the file on disk (fsync) before its rename."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        write(tmp)
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        discard(tmp)
    return path


def discard(path: Path) -> None:
    """Remove a file or folder this run created itself (a temporary beside an output), quietly."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def check_folder(folder: Path, output: Path) -> None:
    """ValueError unless ``folder`` (of ``output``) is an existing folder this process may write in."""
    folder = Path(folder)
    if not folder.is_dir():
        what = describe(folder)
        raise ValueError(f"the folder {str(folder)!r} of the output {str(output)!r} "
                         f"{'does not exist' if what is None else 'is ' + what}")
    try:
        read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
    except OSError:
        read_only = False
    if read_only:
        raise ValueError(f"cannot write the output {str(output)!r}: {str(folder)!r} is on a read-only file system")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the output {str(output)!r}: the folder {str(folder)!r} is not writable "
                         "by this user")


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def check_space(folder: Path, needed: int, what: str) -> None:
    """ValueError unless the file system of ``folder`` has ``needed`` bytes free plus a margin."""
    free = free_bytes(folder)
    margin = max(SPACE_MARGIN_MIN, int(needed * SPACE_MARGIN_SHARE))
    if needed + margin > free:
        raise ValueError(f"not enough room for {what} in {str(folder)!r}: it needs {_mib(needed)} (and "
                         f"{_mib(margin)} to spare), the file system has {_mib(free)} free")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def allocated(path: Path) -> int:
    """Bytes a file (or a folder's files) already holds on disk (sparse files count their
    blocks, not their size): what a resumed run need not find room for again."""
    path = Path(path)
    try:
        if path.is_dir():
            return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file())
        return path.lstat().st_blocks * 512
    except OSError:
        return 0


def os_error_line(e: OSError) -> str:
    """One line for an OSError: the file it names, what failed, the errno's name."""
    name = errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    text = e.strerror or str(e)
    return (f"{e.filename}: {text}" if e.filename is not None else text) + (f" ({name})" if name else "")
