"""Autograd for a conv run by any engine: the forward runs the engine, the backward runs
the engine's backward (threads.backward, LocalCluster.backward): each tile's window,
filter and bias gradients (kernels.conv_tile_backward), the window's pieces added into
their owners' boxes.  What a result with a grad_fn promises is what torch.autograd of the
single-node call gives, up to the order of floating-point sums where tiles overlap."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable


class _EngineConv(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, run: Callable, backward: Callable, holder: list):
        ex = run(x, weight, bias)
        holder.append(ex)
        ctx.save_for_backward(x, weight, bias)
        ctx.backward_fn = backward
        out = ex.output
        ex.output = None  # the autograd output replaces it (see differentiable)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        gx, gw, gb = ctx.backward_fn(x, weight, bias, g.contiguous(), needs)
        return (gx if needs[0] else None, gw if needs[1] else None,
                gb if needs[2] and bias is not None else None, None, None, None)


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether a result computed from ``tensors`` here must carry a grad_fn."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def differentiable(run: Callable, backward: Callable, x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None):
    """``run(x, weight, bias)`` -> Execution, its output differentiable through
    ``backward(x, weight, bias, grad_out, needs) -> (gx, gw, gb)``."""
    holder: list = []
    out = _EngineConv.apply(x, weight, bias, run, backward, holder)
    ex = holder[0]
    ex.output = out
    return ex
