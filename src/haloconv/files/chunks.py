"""Zarr inputs read a chunk at a time through a cache of decoded chunks.

A Zarr chunk is decoded whole whatever part of it is read, and a tile's window reaches into
its neighbours' chunks: read box by box, every chunk would be decoded by each tile that
reads part of it (about 9 for a Dask task's 3 x 3 neighbourhood; 3 for a streamed row band
and the halo rows above and below it).  So a Zarr input is read a chunk at a time through
this process's cache of the last few decoded chunks: tiles taken in order share most of
their neighbours, and each chunk is decoded about once.  The cache's bytes are bounded by
the reader's ``kept`` chunks, and its users count them in their memory: the ``--dask``
workers (cli/dask_run.py: worker_bound) and the threads stream (engines/stream/threads.py)."""

from __future__ import annotations

import itertools
import threading

import numpy as np

from haloconv.files import arrays
from haloconv.tiling.boxes import Box

# decoded chunks kept by default: a Dask task's 3 x 3 neighbourhood
KEPT_CHUNKS = 9
_kept: dict = {}
_kept_lock = threading.Lock()


def chunks_of(source: arrays.DiskArray) -> tuple[int, ...] | None:
    """A Zarr input's chunk shape over the logical axes; None for other files."""
    if source.kind != "zarr":
        return None
    file_chunks = arrays.import_zarr().open_array(source.path, mode="r").chunks
    return tuple(1 if a < 0 else min(file_chunks[a], n) for a, n in zip(source.axes, source.logical_shape))


class Reader:
    """A box of the file's logical (N, C, *spatial) values in ``dtype``, read a chunk at a
    time (``chunks``: the logical chunk shape; None: box by box, no cache) through this
    process's cache of the last ``kept`` decoded chunks.  Picklable: it travels in Dask's
    tasks."""

    def __init__(self, source: arrays.DiskArray, dtype, chunks: tuple[int, ...] | None = None,
                 kept: int = KEPT_CHUNKS):
        self.source, self.dtype, self.chunks, self.kept = source, np.dtype(dtype), chunks, kept

    def __call__(self, box: Box) -> np.ndarray:
        if self.chunks is None:
            return self.source.read(box, self.dtype)
        out = np.empty(box.shape, self.dtype)
        spans = [range(lo // c, -(-hi // c)) for lo, hi, c in zip(box.lo, box.hi, self.chunks)]
        for index in itertools.product(*spans):
            c_lo = [i * c for i, c in zip(index, self.chunks)]
            block = self._chunk(index, c_lo)
            lo = [max(a, b) for a, b in zip(box.lo, c_lo)]
            hi = [min(a, b + n) for a, b, n in zip(box.hi, c_lo, block.shape)]
            out[tuple(slice(a - b, h - b) for a, h, b in zip(lo, hi, box.lo))] = \
                block[tuple(slice(a - b, h - b) for a, h, b in zip(lo, hi, c_lo))]
        return out

    def cached_bytes(self) -> int:
        """The most bytes the cache holds for this reader: ``kept`` whole chunks."""
        if self.chunks is None:
            return 0
        return self.kept * int(np.prod(self.chunks)) * self.dtype.itemsize

    def _chunk(self, index: tuple[int, ...], c_lo: list[int]) -> np.ndarray:
        key = (self.source.path, self.dtype.str, index)
        with _kept_lock:
            block = _kept.pop(key, None)
            if block is not None:
                _kept[key] = block  # the most recently used last
                return block
        shape = self.source.logical_shape
        block = self.source.read(Box(tuple(c_lo), tuple(min(a + c, n) for a, c, n in zip(c_lo, self.chunks, shape))),
                                 self.dtype)
        with _kept_lock:
            _kept[key] = block
            while len(_kept) > self.kept:
                _kept.pop(next(iter(_kept)))
        return block


def forget_chunks() -> None:
    """Drop the chunks this process keeps (at a run's start and end: a file may be rewritten
    between runs)."""
    with _kept_lock:
        _kept.clear()
