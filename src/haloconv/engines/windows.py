"""A tile's window assembled from the pieces its plan names, for tensors and numpy arrays
alike (no torch needed): flipped where the padding reflects, broadcast where it
replicates, zeros where it is zero padding."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from haloconv.planning.boxes import Box, Piece, Tile


def piece_data(src, piece: Piece):
    """Shape the owner's block ``src`` (= input[piece.src]) as it lands in the window."""
    flip = tuple(d for d, s in enumerate(piece.steps) if s == -1)
    if flip:  # a tensor flips itself (torch.flip), an array through numpy
        src = np.flip(src, flip) if isinstance(src, np.ndarray) else src.flip(flip)
    if any(s == 0 for s in piece.steps):
        src = np.broadcast_to(src, piece.dst.shape) if isinstance(src, np.ndarray) else src.expand(piece.dst.shape)
    return src


def assemble_window(x, tile: Tile):
    """The tile's window, read from the whole input ``x`` (a tensor or an array) held in
    this process.

    A view when the window is a plain slice of ``x``; otherwise one buffer of the
    window's size (zeros where the window is zero padding), filled piece by piece.
    """
    if tile.window_is_view:
        return x[tile.window.slices()]
    zeros = np.zeros(tile.window.shape, x.dtype) if isinstance(x, np.ndarray) else x.new_zeros(tile.window.shape)
    return fill_window(tile, lambda box: x[box.slices()], zeros)


def fill_window(tile: Tile, read: Callable[[Box], object], buf):
    """Fill the zeroed window ``buf`` piece by piece; ``read(box)`` returns input[box]
    (a slice of a tensor or array in memory, or a block read from a file)."""
    for piece in tile.pieces:
        buf[piece.dst.slices()] = piece_data(read(piece.src), piece)
    return buf
