"""Gradients of windows and tiles, which every engine that trains adds into the whole
input's and filters' gradients (the adjoints of engines/windows.py's window assembly)."""

from __future__ import annotations

import torch

from haloconv.tiling.boxes import Box, Piece, Tile
from haloconv.tiling.plan import Plan


def piece_grad(g: torch.Tensor, piece: Piece) -> torch.Tensor:
    """Adjoint of piece_data: the gradient of the owner's block from that of its place in
    the window (broadcast dims summed back, reversed dims flipped back)."""
    bcast = [d for d, s in enumerate(piece.steps) if s == 0]
    if bcast:
        g = g.sum(dim=bcast, keepdim=True)
    flip = [d for d, s in enumerate(piece.steps) if s == -1]
    return torch.flip(g, flip) if flip else g


def add_window_grad(gx: torch.Tensor, tile: Tile, g_window: torch.Tensor, origin: Box | None = None) -> None:
    """Adjoint of assemble_window: add the gradient of each piece of ``tile``'s window into
    the input's gradient ``gx`` at the piece's source (``gx`` covers the whole input, or
    the box ``origin`` of it).  Zero-padding parts of the window belong to no input and
    drop out."""
    for piece in tile.pieces:
        at = piece.src.slices() if origin is None else piece.src.within(origin)
        gx[at] += piece_grad(g_window[piece.dst.slices()], piece)


def add_tile_grads(plan: Plan, tile: Tile, gx, gw, gb, g_window, g_w, g_b) -> None:
    """Add one tile's gradients (kernels.conv_tile_backward) into the whole ones (None: not wanted)."""
    c0, c1 = plan.weight_box(tile)
    if gx is not None:
        add_window_grad(gx, tile, g_window)
    if gw is not None:
        gw[c0:c1] += g_w
    if gb is not None:
        gb[c0:c1] += g_b
