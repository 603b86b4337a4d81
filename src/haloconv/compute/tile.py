"""The one tile compute call every engine makes (threads, worker processes, torchrun ranks,
streams, haloconv.nn): a tile's output box from its window, and the backward of that.

What varies per tile (its groups, first kept outputs, output shape) comes from the Tile;
what varies per plan (the compute backend, the convolution) from the Plan; the caller
gives the window, the filters of the tile's output channels, and torch's conv backend
(selected once per run the way the single-node call would, compute/kernels.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from haloconv.compute import backends
from haloconv.tiling.boxes import Tile
from haloconv.tiling.plan import Plan

if TYPE_CHECKING:
    import torch


def compute_tile(plan: Plan, tile: Tile, window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 torch_backend: object, out: torch.Tensor | None = None) -> torch.Tensor:
    """``tile``'s output box from its window with ``plan.backend``: written into ``out`` (the
    box of the result, say) when given, which backends that can write there do without an
    extra copy; else a view of the computed outputs when it can be (the caller copies it
    where it must)."""
    return backends.get(plan.backend).compute(window, weight, bias, plan.spec, tile.groups, torch_backend,
                                              tile.first, tile.out.shape[2:], out, origin=tile.out.lo[2:])


def compute_tile_array(plan: Plan, tile: Tile, window: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                       out: np.ndarray, threads: int) -> None:
    """``compute_tile`` on numpy arrays, into ``out`` (the tile's output box), with
    ``threads`` cores, for a plan whose backend computes arrays (no torch): the same bits."""
    backends.get(plan.backend).compute_array(window, weight, bias, plan.spec, tile.first, out, threads,
                                             origin=tile.out.lo[2:])


def tile_backward(plan: Plan, tile: Tile, window: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor,
                  needs: tuple[bool, bool, bool]) -> tuple:
    """(window, filter, bias) gradients of ``tile`` from its output box's gradient ``grad``
    (torch's convolution_backward on the window; None where ``needs`` says not wanted)."""
    from haloconv.compute import kernels

    return kernels.conv_tile_backward(window, weight, grad, plan.spec, tile.groups, tile.first, needs)


def tile_full_grad(plan: Plan, tile: Tile, window: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad`` as tile_backward hands it to torch (among all the outputs the window
    computes, contiguous): made once for a tile whose gradients are computed in parts."""
    from haloconv.compute import kernels

    return kernels.full_grad(window.shape, grad, plan.spec, tile.first).contiguous()
