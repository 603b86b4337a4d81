"""What the engines that compute with torch share: gradients of windows and tiles, and the
one-tile call calibrate and the speed probes time.  (Windows: engines/windows.py; results:
engines/execution.py.)"""

from __future__ import annotations

import torch

from haloconv.compute.tile import compute_tile
from haloconv.engines.windows import assemble_window
from haloconv.planning.boxes import Box, Piece, Tile
from haloconv.planning.plan import Plan, make_plan


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


def as_one_tile(method: str, spec, x: torch.Tensor, weight: torch.Tensor, torch_backend: object):
    """A call computing all of ``spec`` on ``x`` as a one-tile plan's tile, the way a worker
    computes a tile (its window, ``torch_backend``): what calibrate and the speed probes time."""
    plan = make_plan(spec, "batch", 1, backend=method)
    tile = plan.tiles[0]
    window = assemble_window(x, tile)  # a view when it can be
    return lambda: compute_tile(plan, tile, window, weight, None, torch_backend)
