"""How boxes travel between ranks: a box of a tensor as the runs of contiguous bytes it is
made of (tiling.messages.transfer_chunks), sent from where it lies and received straight
into its place where it can be; the dtype a receiver allocates for; pieces into a window."""

from __future__ import annotations

import torch

from haloconv.engines.spmd.comm import Comm
from haloconv.engines.windows import piece_data
from haloconv.tiling.boxes import Box
from haloconv.tiling.messages import transfer_chunks
from haloconv.tiling.plan import Plan

_DTYPES = [torch.float32, torch.float64]


def send_dtype(comm: Comm, x: torch.Tensor, dst: int, keep: list):
    """Receivers allocate their buffers before data arrives: tell them the dtype."""
    code = torch.tensor([_DTYPES.index(x.dtype)], dtype=torch.int64, device=x.device)
    keep.append(code)
    return comm.isend(code, dst, "control")


def recv_dtype(comm: Comm, src: int) -> torch.dtype:
    code = torch.empty(1, dtype=torch.int64, device=comm.device)
    comm.irecv(code, src, "control").wait()
    return _DTYPES[int(code.item())]


def send_box(comm: Comm, t: torch.Tensor, box: Box, dst: int, phase: str, keep: list,
             held: Box | None = None, shape=None) -> list:
    """Post the sends of ``box`` of a tensor of ``shape``, run by contiguous run (see
    plan.transfer_chunks), from ``t``, which holds the box ``held`` (default: all of it)."""
    shape = tuple(t.shape) if shape is None else shape
    held = Box((0,) * len(shape), tuple(shape)) if held is None else held
    works = []
    for chunk in transfer_chunks(box, shape, t.element_size()):
        data = t[chunk.within(held)].contiguous()  # a view when the run is contiguous: no copy
        keep.append(data)
        works.append(comm.isend(data, dst, phase))
    return works


def send_to_workers(comm: Comm, plan: Plan, x: torch.Tensor, src: int, boxes) -> tuple[list, list]:
    """From ``src``: the dtype, then ``boxes(tile)`` of ``x``, to every other worker."""
    works, keep = [], []
    for t in plan.tiles:
        if t.rank != src:
            works.append(send_dtype(comm, x, t.rank, keep))
            for box in boxes(t):
                works += send_box(comm, x, box, t.rank, "scatter", keep)
    return works, keep


def recv_in_place(comm: Comm, target: torch.Tensor, box: Box, shape, src: int, phase: str) -> list | None:
    """Post the receives of ``box`` straight into the box-shaped view ``target`` when each
    run lands contiguously there; None when it would not."""
    chunks = transfer_chunks(box, shape, target.element_size())
    views = [target[c.within(box)] for c in chunks]
    if not all(v.is_contiguous() for v in views):
        return None
    return [comm.irecv(v, src, phase) for v in views]


def recv_box(comm: Comm, buf: torch.Tensor, box: Box, shape, src: int, phase: str) -> list:
    """Post the receives of a box of a tensor of ``shape`` into the box-shaped ``buf``."""
    return [comm.irecv(buf[chunk.within(box)], src, phase)
            for chunk in transfer_chunks(box, shape, buf.element_size())]


def post_output_receive(comm: Comm, out: torch.Tensor, box: Box, src: int) -> tuple:
    """(buffer or None, works): the receive of ``box`` of ``out`` from ``src``, straight into
    ``out`` by contiguous run, or into a buffer when the box travels packed."""
    chunks = transfer_chunks(box, out.shape, out.element_size())
    if len(chunks) == 1 and not out[box.slices()].is_contiguous():
        buf = torch.empty(box.shape, dtype=out.dtype, device=out.device)
        return buf, [comm.irecv(buf, src, "gather")]
    return None, [comm.irecv(out[c.slices()], src, "gather") for c in chunks]


def fill(window: torch.Tensor, bufs: list) -> None:
    for p, b in bufs:
        window[p.dst.slices()] = piece_data(b, p)

