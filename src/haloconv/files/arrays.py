"""Arrays on disk, read and written box by box: the out-of-core inputs and outputs.

A DiskArray is a small picklable description of a file (path, layout, where its data
starts); every process of a streamed run opens the file itself and touches only the
boxes it computes.  Boxes are in the logical (N, C, *spatial) layout of haloconv; the
axis map says where each logical axis lives in the file (an RGB TIFF is H x W x 3).

- raw: C-ordered data at a byte offset (.npy, and uncompressed contiguous TIFF) —
  read with pread and written with pwrite run by run: no memory map, so nothing of the
  file counts towards the process's resident memory.  An output marked ``direct`` is
  written around the page cache (O_DIRECT) where its file system allows it: the cache
  would only hold a copy of an output bigger than memory, and filling it takes pages the
  machine may first have to find (a virtual machine whose host took its free memory back
  fills the cache 10x slower than its disk takes direct writes).
- zarr: a zarr array (a .zarr folder), or a tiled/striped/compressed TIFF seen through
  tifffile's zarr store (read only).  Only the chunks a box touches are decoded.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from haloconv.files import guard, page_cache
from haloconv.files.pixels import TIFF_SUFFIXES, integer_rule, to_float
from haloconv.tiling.boxes import Box

FORMATS = ("npy", "tif", "zarr")  # streamed output formats
LAYOUTS = ("auto", "chw", "hwc", "dhw")  # how a 3-D array's axes are read (logical_axes)


@dataclass(frozen=True)
class DiskArray:
    path: str
    kind: str  # 'raw' | 'zarr' | 'tiff-zarr'
    shape: tuple[int, ...]  # of the array in the file
    dtype: str  # numpy dtype string, byte order included
    axes: tuple[int, ...]  # logical dim -> file axis, -1 for a dim of size 1 not in the file
    offset: int = 0  # raw: byte offset of element 0
    channels: int | None = None  # logical channels (an RGBA file keeps its first 3)
    integers: str = "unit"  # 'unit' or 'keep': how integer values become floats (pixels.to_float)
    layout: str = ""  # what the file's axes were read as, in words
    durable: bool = False  # an output whose flush makes its writes durable on disk (a run's sync)
    direct: bool = False  # an output written around the page cache where it can be (module docstring)

    @property
    def logical_shape(self) -> tuple[int, ...]:
        shape = [1 if a < 0 else self.shape[a] for a in self.axes]
        if self.channels is not None:
            shape[1] = self.channels
        return tuple(shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def _file_box(self, box: Box) -> tuple[tuple[int, int], ...]:
        ranges = [(0, n) for n in self.shape]
        for dim, a in enumerate(self.axes):
            if a >= 0:
                ranges[a] = (box.lo[dim], box.hi[dim])
        return tuple(ranges)

    def _to_logical(self, a: np.ndarray) -> np.ndarray:
        return to_logical(a, self.axes)

    def _from_logical(self, a: np.ndarray) -> np.ndarray:
        present = [d for d, ax in enumerate(self.axes) if ax >= 0]
        a = a.reshape([a.shape[d] for d in present])
        order = sorted(present, key=lambda d: self.axes[d])
        return np.transpose(a, [present.index(d) for d in order])

    def read(self, box: Box, dtype: np.dtype | str = np.float32) -> np.ndarray:
        """The logical ``box`` as ``dtype``, integers made floats by this array's rule
        (pixels.to_float), as images.read_input makes them."""
        ranges = self._file_box(box)
        if self.kind == "raw":
            a = _raw_io(self, ranges, None)
        else:
            a = np.asarray(_zarr(self, "r")[tuple(slice(lo, hi) for lo, hi in ranges)])
        return to_float(self._to_logical(a), self.integers, dtype)

    def read_into(self, box: Box, dest: np.ndarray) -> bool:
        """Read the logical ``box`` straight into ``dest`` (its shape, C-contiguous) when
        the file holds it as is — raw, in ``dest``'s dtype and byte order, axes in logical
        order, no channel dropped: one pread per contiguous run, no block in between.
        False (nothing read) otherwise: the caller reads (``read``) and copies."""
        if (self.kind != "raw" or np.dtype(self.dtype) != dest.dtype or not dest.flags.c_contiguous
                or self.channels is not None or not dest.dtype.isnative
                or [a for a in self.axes if a >= 0] != sorted(a for a in self.axes if a >= 0)):
            return False
        ranges = self._file_box(box)
        _raw_io(self, ranges, None, into=dest.reshape([hi - lo for lo, hi in ranges]))
        return True

    def read_direct(self, box: Box, raw: np.ndarray) -> np.ndarray | None:
        """The logical ``box`` read around the page cache into ``raw`` (a byte buffer of at
        least ``direct_bytes`` of the box's bytes), returned as a view of ``raw`` in the
        box's shape and this array's dtype; or None, nothing read, where the caller reads
        another way: the box is not one contiguous run of a raw file in logical order, is
        short, or lies in the page cache already (from memory a buffered read is faster than
        any disk), or the file system refuses direct reads.  Direct reads take the disk's
        bytes straight into the buffer, with no page of cache to find and fill on the way
        (the cost that makes buffered reads of a cold input slower than the disk)."""
        if (self.kind != "raw" or self.channels is not None or not np.dtype(self.dtype).isnative
                or [a for a in self.axes if a >= 0] != sorted(a for a in self.axes if a >= 0)):
            return None
        pos, length = _one_run(self, self._file_box(box))
        phase = pos % DIRECT_ALIGN  # where in its page the run starts
        lo, hi = pos - phase, -(-(pos + length) // DIRECT_ALIGN) * DIRECT_ALIGN  # the run's whole pages
        skip = -raw.ctypes.data % DIRECT_ALIGN  # to the buffer's first aligned byte
        if (length < DIRECT_MIN or pos % np.dtype(self.dtype).itemsize or raw.nbytes < skip + hi - lo
                or _cached(self.path, pos, length)):
            return None
        fd = _direct_fd(self.path, read=True)
        if fd < 0:
            return None
        raw = raw[skip:]
        view, done = memoryview(raw).cast("B")[:hi - lo], 0
        try:
            while done < phase + length:  # a read may stop short; at the file's end, past ``length``
                n = os.preadv(fd, [view[done:]], lo + done)
                if n <= 0:
                    raise ValueError(f"{self.path!r} is shorter than its header says (truncated?)")
                done += n
        except OSError:  # refused after all (EINVAL: a block larger than DIRECT_ALIGN): buffered from here on
            if done:
                raise
            _close_direct(self.path, read=True)
            return None
        return raw[phase:phase + length].view(self.dtype).reshape(box.shape)

    def write(self, box: Box, block: np.ndarray) -> None:
        """Write the logical ``box`` (block in (N, C, *spatial), this array's dtype)."""
        ranges = self._file_box(box)
        data = self._from_logical(np.asarray(block, dtype=self.dtype))
        if self.kind == "raw":  # pwrite runs of contiguous bytes
            _raw_io(self, ranges, np.ascontiguousarray(data))
        elif self.kind == "zarr":
            _zarr(self, "r+")[tuple(slice(lo, hi) for lo, hi in ranges)] = data
        else:
            raise ValueError(f"{self.path!r}: this TIFF layout is read only")

    def flush(self) -> None:
        """Make what this process wrote durable (raw files: fdatasync) before a tile is
        journaled as done, when the output is ``durable`` (a run with sync); else the
        operating system has it already (pwrite), which is what the journal needs while
        the machine keeps running."""
        if self.durable and self.kind == "raw":
            for key in ((self.path, True), (self.path, "direct")):
                fd = _fds.get(key)
                if fd is not None and fd >= 0:
                    os.fdatasync(fd)


# -- raw files: pread/pwrite, run by run ------------------------------------------------------
_fds: dict[tuple[str, bool | str], int] = {}  # per process: (path, writable or 'direct') -> fd (-1: none), opened once


def _fd(path: str, write: bool) -> int:
    key = (path, write)
    if key not in _fds:
        _fds[key] = os.open(path, os.O_RDWR if write else os.O_RDONLY)
    return _fds[key]


def close_all() -> None:
    """Close this process's open files (end of a streamed run)."""
    for fd in _fds.values():
        if fd >= 0:
            os.close(fd)
    _fds.clear()
    for store in _zarrs.values():
        close = getattr(store[1], "close", None)
        if close is not None:
            close()
    _zarrs.clear()


def _raw_io(arr: DiskArray, ranges, data: np.ndarray | None, into: np.ndarray | None = None) -> np.ndarray:
    """Read (data None; into ``into`` when given, C-contiguous, else a new array) or write
    the file box ``ranges`` of a C-ordered raw array: one pread/pwrite per contiguous run
    (the trailing dims a box spans whole merge into one)."""
    item = np.dtype(arr.dtype).itemsize
    ext = [hi - lo for lo, hi in ranges]
    j, strides, base = _runs_of(arr, ranges)
    run = math.prod(ext[j:])
    out = data if data is not None else into if into is not None else np.empty(ext, dtype=arr.dtype)
    flat = out.reshape(-1, run) if run else out.reshape(0, 0)
    fd = _fd(arr.path, data is not None)
    for r, idx in enumerate(np.ndindex(*ext[:j])):
        pos = arr.offset + (base + sum(i * s for i, s in zip(idx, strides))) * item
        view = memoryview(flat[r]).cast("B")
        if data is not None and arr.direct:
            view = _write_direct(arr.path, view, pos)  # the part around the page cache; the rest below
        _move(arr.path, fd, view, pos, data is None)
    return out


def _move(path: str, fd: int, view: memoryview, pos: int, read: bool) -> None:
    done = 0
    while done < len(view):  # a pread/pwrite may move fewer bytes than asked
        n = os.preadv(fd, [view[done:]], pos + done) if read else os.pwrite(fd, view[done:], pos + done)
        if n <= 0:
            raise ValueError(f"{path!r} is shorter than its header says (truncated?)")
        done += n


DIRECT_ALIGN = 4096  # O_DIRECT: file offsets, lengths and memory aligned to the device's block (at most a page)
DIRECT_MIN = 1 << 20  # runs shorter than this go through the page cache (a few rows of a column split)
BOUNCE_BYTES = 4 << 20  # per thread: the aligned buffer direct writes go out from


def _write_direct(path: str, view: memoryview, pos: int) -> memoryview:
    """Write the blocks of ``view`` (bytes for file offset ``pos``) that lie whole in
    DIRECT_ALIGN-aligned blocks of the file around the page cache, through a page-aligned
    buffer of this thread's; return what is left for a buffered write: the bytes before
    them, or all of ``view`` when the run is short or the file system refuses O_DIRECT.
    The bytes after them are written buffered here.  Direct and buffered writes never share
    a block, so the page cache and the disk never disagree about one."""
    lo = -(-pos // DIRECT_ALIGN) * DIRECT_ALIGN
    hi = (pos + len(view)) // DIRECT_ALIGN * DIRECT_ALIGN
    if hi - lo < DIRECT_MIN:
        return view
    fd = _direct_fd(path)
    if fd < 0:
        return view
    bounce = _bounce()
    at = lo
    while at < hi:
        n = min(hi - at, len(bounce))
        bounce[:n] = view[at - pos:at - pos + n]
        try:
            _move(path, fd, bounce[:n], at, read=False)
        except OSError:  # refused after all (EINVAL): everything buffered from here on
            if at != lo:
                raise
            _close_direct(path, read=False)
            return view
        at += n
    _move(path, _fd(path, True), view[hi - pos:], hi, read=False)
    return view[:lo - pos]


def direct_bytes(nbytes: int) -> int:
    """The bytes of a buffer that read_direct reads ``nbytes`` into, wherever it starts: the
    run's first and last pages are read whole, into the buffer's aligned part."""
    return nbytes + 3 * DIRECT_ALIGN


def _runs_of(arr: DiskArray, ranges) -> tuple[int, list[int], int]:
    """How the file box ``ranges`` of a C-ordered raw array lies in the file: the run axis
    (the innermost one the box does not span whole: the trailing dims it spans merge into
    one contiguous run), the file's strides in elements, and the box's first element."""
    shape = arr.shape
    j = len(shape) - 1
    while j > 0 and ranges[j] == (0, shape[j]):
        j -= 1
    strides = [math.prod(shape[a + 1:]) for a in range(len(shape))]
    return j, strides, sum(lo * s for (lo, _), s in zip(ranges, strides))


def _one_run(arr: DiskArray, ranges) -> tuple[int, int]:
    """(file position, bytes) of the file box ``ranges`` where it is one contiguous run of
    bytes; (0, 0) where it is not."""
    item = np.dtype(arr.dtype).itemsize
    j, _, base = _runs_of(arr, ranges)
    if any(hi - lo != 1 for lo, hi in ranges[:j]):
        return 0, 0
    return arr.offset + base * item, math.prod(hi - lo for lo, hi in ranges) * item


# pages asked about before a direct read: the run's first, middle and last
CACHE_PROBES = 3


def _cached(path: str, pos: int, length: int) -> bool:
    """Whether the run's first, middle and last pages lie in the page cache (page_cache.py)."""
    at = [pos + (length - 1) * k // (CACHE_PROBES - 1) for k in range(CACHE_PROBES)]
    return page_cache.cached(_fd(path, False), at)


def _direct_fd(path: str, read: bool = False) -> int:
    key = (path, "direct-read" if read else "direct")
    if key not in _fds:
        _fds[key] = -1  # a platform or file system without direct I/O (tmpfs): the page cache then
        if hasattr(os, "O_DIRECT"):
            try:
                _fds[key] = os.open(path, (os.O_RDONLY if read else os.O_WRONLY) | os.O_DIRECT)
            except OSError:
                pass
    return _fds[key]


def _close_direct(path: str, read: bool) -> None:
    key = (path, "direct-read" if read else "direct")
    fd = _fds.get(key, -1)
    if fd >= 0:
        os.close(fd)
    _fds[key] = -1


_bounces = threading.local()


def _bounce() -> memoryview:
    if not hasattr(_bounces, "buf"):
        _bounces.buf = mmap.mmap(-1, BOUNCE_BYTES)  # page-aligned, and used again tile after tile
    return memoryview(_bounces.buf)


# -- zarr (and TIFF through tifffile's zarr store) ------------------------------------------
_zarrs: dict[tuple[str, str], tuple] = {}


def import_zarr():
    try:
        import zarr
    except ImportError:
        raise ValueError("zarr files and tiled or compressed TIFFs are streamed through zarr: "
                         "pip install 'haloconv[zarr]'") from None
    return zarr


def _zarr(arr: DiskArray, mode: str):
    key = (arr.path, mode)
    if key not in _zarrs:
        zarr = import_zarr()

        if arr.kind == "tiff-zarr":
            import tifffile

            store = tifffile.imread(arr.path, aszarr=True)
            _zarrs[key] = (zarr.open_array(store, mode="r"), store)
        else:
            _zarrs[key] = (zarr.open_array(arr.path, mode=mode), None)
    return _zarrs[key][0]


# -- opening inputs ----------------------------------------------------------------------------
def tiff_channels(shape: tuple[int, ...], axes: tuple[int, ...], words: str) -> tuple[int | None, str]:
    """A TIFF read channels last with 4 channels is RGBA: its first 3 are kept (alpha
    dropped), for whole reads (images.read_input) and streamed ones alike."""
    if axes == (-1, 2, 0, 1) and shape[-1] == 4:
        return 3, "H x W x RGBA: 3 channels (alpha dropped)"
    return None, words


def to_logical(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """A file-ordered block -> the logical (N, C, *spatial) block (``axes``: logical dim ->
    file axis, -1 for a dim of size 1 not in the file)."""
    present = [d for d, ax in enumerate(axes) if ax >= 0]
    order = sorted(present, key=lambda d: axes[d])  # logical dims in file order
    a = np.transpose(a, [order.index(d) for d in present])  # now in logical order
    return a.reshape([a.shape[present.index(d)] if d in present else 1 for d in range(len(axes))])


def logical_axes(shape: tuple[int, ...], path: str, layout: str = "auto",
                 pages: bool = False) -> tuple[tuple[int, ...], str]:
    """How a file's array of ``shape`` is read as (N, C, *spatial): (axes, in words).

    (H, W) -> (1, 1, H, W); 4-D and 5-D as they are (N, C, *spatial).  A 3-D array is
    C x H x W ('chw'), H x W x C ('hwc', channels last) or a volume D x H x W ('dhw', one
    channel); 'auto' reads H x W x C when its last axis has at most 4 entries and its first
    more (an RGB(A) picture saved as an array), else C x H x W.  ``pages``: a TIFF's first
    axis is its pages.

    >>> logical_axes((512, 512, 3), "x.npy")
    ((-1, 2, 0, 1), 'H x W x C, channels last: 3 channels')
    >>> logical_axes((12, 64, 64), "stack.tif", pages=True)[1]
    '12 pages x H x W: each page a channel (--layout dhw reads them as a volume)'
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    ndim = len(shape)
    if ndim not in (2, 3, 4, 5):
        raise ValueError(f"input {path!r} has shape {shape}; expected 2-D to 5-D")
    if ndim != 3:
        if layout != "auto":
            raise ValueError(f"--layout {layout} applies to a 3-D array; {path!r} has shape {shape}")
        if ndim == 2:
            return (-1, -1, 0, 1), "H x W"
        return tuple(range(ndim)), "N x C x H x W" if ndim == 4 else "N x C x D x H x W"
    if layout == "auto":
        layout = "hwc" if shape[-1] <= 4 < shape[0] else "chw"
    if layout == "hwc":
        return (-1, 2, 0, 1), f"H x W x C, channels last: {shape[-1]} channels"
    if layout == "dhw":
        return (-1, -1, 0, 1, 2), f"D x H x W: a volume of {shape[0]} slices, one channel"
    if pages:
        return (-1, 0, 1, 2), f"{shape[0]} pages x H x W: each page a channel (--layout dhw reads them as a volume)"
    return (-1, 0, 1, 2), f"C x H x W: {shape[0]} channels"


def _check_dtype(dtype: np.dtype, path: str) -> None:
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype.kind == "b"):
        raise ValueError(f"input {path!r} has an unsupported dtype {dtype} (use integer, bool or floating)")


def open_input(path: str | os.PathLike, integers: str = "auto", layout: str = "auto") -> DiskArray:
    """Describe an input file for streaming: .npy, TIFF (contiguous, striped or tiled,
    compressed or not), or a .zarr array.  ``integers``: how integer values become floats
    (pixels.integer_rule: 'auto' scales a TIFF's to [0, 1] and keeps an array's);
    ``layout``: how a 3-D array's axes are read (logical_axes).  ValueError naming the file
    when it cannot."""
    p = Path(path)
    name = str(p)
    if not p.exists():
        raise ValueError(f"input file {name!r} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = _open_npy(name, layout)
        elif suffix in TIFF_SUFFIXES:
            arr = _open_tiff(name, layout)
        elif suffix == ".zarr":
            z = import_zarr().open_array(name, mode="r")
            _check_dtype(np.dtype(z.dtype), name)
            axes, words = logical_axes(tuple(z.shape), name, layout)
            arr = DiskArray(name, "zarr", tuple(z.shape), np.dtype(z.dtype).str, axes, layout=words)
        else:
            raise ValueError(f"input {name!r}: streaming reads .npy, .tif/.tiff or .zarr, not {suffix!r}")
    except ValueError as e:
        if name in str(e):
            raise
        raise ValueError(f"cannot read input {name!r}: {e}") from None
    except Exception as e:  # corrupt files raise library-specific errors
        raise ValueError(f"cannot read input {name!r}: {e}") from None
    if 0 in arr.shape:
        raise ValueError(f"input {name!r} is empty: shape {arr.shape}")
    return dataclasses.replace(arr, integers=integer_rule(integers, picture=suffix in TIFF_SUFFIXES))


def _open_npy(name: str, layout: str = "auto") -> DiskArray:
    with open(name, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran:
        raise ValueError(f"input {name!r} is Fortran-ordered; streaming needs a C-ordered .npy")
    _check_dtype(dtype, name)
    axes, words = logical_axes(tuple(shape), name, layout)
    arr = DiskArray(name, "raw", tuple(shape), dtype.str, axes, offset, layout=words)
    if os.path.getsize(name) < offset + arr.nbytes:
        raise ValueError(f"input {name!r} is truncated: {os.path.getsize(name)} bytes, "
                         f"its header needs {offset + arr.nbytes}")
    return arr


def _open_tiff(name: str, layout: str = "auto") -> DiskArray:
    import tifffile

    with tifffile.TiffFile(name) as tf:
        series = tf.series[0]
        shape, dtype = tuple(series.shape), np.dtype(series.dtype)
        offset = series.dataoffset
        if dtype.itemsize > 1:
            dtype = dtype.newbyteorder(tf.byteorder)
    _check_dtype(dtype, name)
    if len(shape) not in (2, 3):
        raise ValueError(f"input {name!r} has shape {shape}; expected a 2-D or 3-D image")
    axes, words = logical_axes(shape, name, layout, pages=True)
    channels, words = tiff_channels(shape, axes, words)
    if offset is not None:  # uncompressed and contiguous: read it like a .npy
        return DiskArray(name, "raw", shape, dtype.str, axes, int(offset), channels, layout=words)
    return DiskArray(name, "tiff-zarr", shape, dtype.str, axes, 0, channels, layout=words)


# -- creating outputs --------------------------------------------------------------------------
def output_path(prefix: str | os.PathLike, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"output format must be one of {FORMATS}, got {fmt!r}")
    return Path(f"{prefix}.{fmt}")


def partial_path(path: Path) -> Path:
    """Where a streamed output grows until it is whole (then renamed to ``path``)."""
    return path.with_name(path.name + ".partial")


def create_output(path: Path, fmt: str, shape: tuple[int, ...], dtype, chunks: tuple[int, ...]) -> DiskArray:
    """A preallocated output in the logical layout (N, C, *spatial), sparse where the file
    system allows (nothing is written until the tiles are); zarr chunks = ``chunks``."""
    dtype = np.dtype(dtype)
    name = str(path)
    guard.remove_own(path)  # a leftover of an earlier run; never a folder or file haloconv did not write
    if fmt == "npy":
        m = np.lib.format.open_memmap(name, mode="w+", dtype=dtype, shape=shape)
        del m
    elif fmt == "tif":
        import tifffile

        if shape[0] != 1:
            raise ValueError(f"a TIFF output holds one sample; the output has N={shape[0]} (use npy or zarr)")
        m = tifffile.memmap(name, shape=_tiff_shape(shape), dtype=dtype)
        del m
    else:
        import_zarr().create_array(store=name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                    attributes={guard.MARK: {"streamed": True}})
    return open_output(path, fmt, shape, dtype)


def _tiff_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[2:] if shape[1] == 1 else shape[1:]  # (H, W) or (C, H, W)


def open_output(path: Path, fmt: str, shape: tuple[int, ...], dtype) -> DiskArray:
    """Describe an output create_output made (to resume it); ValueError if it does not match."""
    dtype, name = np.dtype(dtype), str(path)
    try:
        if fmt == "npy":
            arr = _open_npy(name)
            arr = DiskArray(name, "raw", arr.shape, arr.dtype, tuple(range(len(arr.shape))), arr.offset)
        elif fmt == "tif":
            import tifffile

            with tifffile.TiffFile(name) as tf:
                s = tf.series[0]
                file_shape, offset, order = tuple(s.shape), s.dataoffset, tf.byteorder
                fdtype = np.dtype(s.dtype).newbyteorder(order)
            axes = (-1, -1, 0, 1) if len(file_shape) == 2 else (-1, 0, 1, 2)
            arr = DiskArray(name, "raw", file_shape, fdtype.str, axes, int(offset))
        else:
            z = import_zarr().open_array(name, mode="r+")
            arr = DiskArray(name, "zarr", tuple(z.shape), np.dtype(z.dtype).str, tuple(range(z.ndim)))
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"cannot open the output {name!r}: {e}") from None
    if arr.logical_shape != tuple(shape) or np.dtype(arr.dtype) != dtype:
        raise ValueError(f"the output {name!r} holds {arr.logical_shape} {np.dtype(arr.dtype)}, "
                         f"this run writes {tuple(shape)} {dtype}")
    return arr


def promote(partial: Path, final: Path, sync: bool = False) -> None:
    """Rename a finished output into place (a folder for zarr), replacing only what
    files/guard.py allows (a regular file, or a .zarr store haloconv wrote); ``sync``: its
    data made durable first, so that the name never shows a file the disk does not hold whole."""
    if sync:
        for path in [partial] if partial.is_file() else sorted(p for p in partial.rglob("*") if p.is_file()):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    guard.check_replaceable(final)
    if final.is_dir() and not final.is_symlink():  # a store of haloconv's: a folder is not replaced by a rename
        guard.remove_own(final)
    os.replace(partial, final)
