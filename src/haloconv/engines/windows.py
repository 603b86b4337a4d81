"""A tile's window assembled from the pieces its plan names, for tensors and numpy arrays
alike (no torch needed): flipped where the padding reflects, broadcast where it
replicates, zeros where it is zero padding."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from haloconv.tiling.boxes import Box, Piece, Tile


def piece_data(src, piece: Piece):
    """Shape the owner's block ``src`` (= input[piece.src]) as it lands in the window."""
    flip = tuple(d for d, s in enumerate(piece.steps) if s == -1)
    if flip:  # a tensor flips itself (torch.flip), an array through numpy
        src = np.flip(src, flip) if isinstance(src, np.ndarray) else src.flip(flip)
    if any(s == 0 for s in piece.steps):
        src = np.broadcast_to(src, piece.dst.shape) if isinstance(src, np.ndarray) else src.expand(piece.dst.shape)
    return src


def blank(tile: Tile, like, shape=None):
    """A buffer for ``tile``'s window (or ``shape``), of ``like``'s kind, dtype and device:
    zeros, or the padding value where the tile's padding reads one (Tile.fill)."""
    shape = tuple(tile.window.shape if shape is None else shape)
    if isinstance(like, np.ndarray):
        return np.zeros(shape, like.dtype) if tile.fill == 0 else np.full(shape, tile.fill, like.dtype)
    return like.new_zeros(shape) if tile.fill == 0 else like.new_full(shape, tile.fill)


def assemble_window(x, tile: Tile):
    """The tile's window, read from the whole input ``x`` (a tensor or an array) held in
    this process.

    A view when the window is a plain slice of ``x``; otherwise one buffer of the
    window's size (zeros or the padding value where no piece lands), filled piece by piece.
    """
    if tile.window_is_view:
        return x[tile.window.slices()]
    return fill_window(tile, lambda box: x[box.slices()], blank(tile, x))


def fill_window(tile: Tile, read: Callable[[Box], object], buf):
    """Fill the blank window ``buf`` piece by piece; ``read(box)`` returns input[box]
    (a slice of a tensor or array in memory, or a block read from a file)."""
    for piece in tile.pieces:
        buf[piece.dst.slices()] = piece_data(read(piece.src), piece)
    return buf
