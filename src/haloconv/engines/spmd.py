"""What each rank does with a Plan: scatter, halo exchange, compute, gather.

Every rank calls these with the same Plan (SPMD).  Worker ``r`` computes tile ``r``;
ranks without a tile take part in collectives and hold nothing.  The data moved is
exactly what ``Plan.traffic`` predicts.
"""

from __future__ import annotations

import time

import torch

from haloconv.compute import kernels
from haloconv.compute import tile as one_tile
from haloconv.engines.base import add_tile_grads, as_one_tile, piece_grad
from haloconv.engines.comm import Comm
from haloconv.engines.windows import assemble_window, piece_data
from haloconv.planning.boxes import Box, Tile
from haloconv.planning.messages import transfer_chunks
from haloconv.planning.plan import Plan
from haloconv.progress import Counter

_DTYPES = [torch.float32, torch.float64]


def _send_dtype(comm: Comm, x: torch.Tensor, dst: int, keep: list):
    """Receivers allocate their buffers before data arrives: tell them the dtype."""
    code = torch.tensor([_DTYPES.index(x.dtype)], dtype=torch.int64, device=x.device)
    keep.append(code)
    return comm.isend(code, dst, "control")


def _recv_dtype(comm: Comm, src: int) -> torch.dtype:
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


def _send_to_workers(comm: Comm, plan: Plan, x: torch.Tensor, src: int, boxes) -> tuple[list, list]:
    """From ``src``: the dtype, then ``boxes(tile)`` of ``x``, to every other worker."""
    works, keep = [], []
    for t in plan.tiles:
        if t.rank != src:
            works.append(_send_dtype(comm, x, t.rank, keep))
            for box in boxes(t):
                works += send_box(comm, x, box, t.rank, "scatter", keep)
    return works, keep


def _recv_in_place(comm: Comm, target: torch.Tensor, box: Box, shape, src: int, phase: str) -> list | None:
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


def _room(tile: Tile, shape) -> Box:
    """The owned box grown to the tile's window, inside the tensor: a shard's buffer."""
    return Box(
        tuple(max(0, min(o, w)) for o, w in zip(tile.owned.lo, tile.window.lo)),
        tuple(min(n, max(o, w)) for o, w, n in zip(tile.owned.hi, tile.window.hi, shape)),
    )


def _check_shard(x_local: torch.Tensor | None, tile: Tile | None, name: str) -> None:
    if tile is None:
        return
    if x_local is None or tuple(x_local.shape) != tile.owned.shape:
        got = None if x_local is None else tuple(x_local.shape)
        raise ValueError(f"{name} on rank {tile.rank} must have the owned shape {tile.owned.shape}, got {got}")


def distribute_weights(
    comm: Comm, plan: Plan, weight: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype, src: int = 0
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """From the full weight/bias on ``src``: this rank's filters (None if idle)."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("weights"):
        works, keep = [], []
        if comm.rank == src:
            for t in plan.tiles:
                if t.rank == src:
                    continue
                c0, c1 = plan.weight_box(t)
                parts = [weight[c0:c1].contiguous()] + ([bias[c0:c1].contiguous()] if bias is not None else [])
                keep += parts
                works += [comm.isend(p, t.rank, "weights") for p in parts]
            comm.wait(works)
            if tile is None:
                return None, None
            c0, c1 = plan.weight_box(tile)
            return weight[c0:c1], None if bias is None else bias[c0:c1]
        if tile is None:
            return None, None
        c0, c1 = plan.weight_box(tile)
        w = torch.empty((c1 - c0, *plan.spec.weight_shape[1:]), dtype=dtype, device=comm.device)
        works.append(comm.irecv(w, src, "weights"))
        b = None
        if plan.spec.has_bias:
            b = torch.empty(c1 - c0, dtype=dtype, device=comm.device)
            works.append(comm.irecv(b, src, "weights"))
        comm.wait(works)
        return w, b


def scatter(comm: Comm, plan: Plan, x: torch.Tensor | None, src: int = 0) -> torch.Tensor | None:
    """From the full ``x`` on ``src``: every rank's owned input box (None if idle)."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("scatter"):
        if comm.rank == src:
            if x is None or tuple(x.shape) != plan.spec.input_shape:
                raise ValueError(f"x on the source rank must have shape {plan.spec.input_shape}")
            x = x.contiguous()
            works, keep = _send_to_workers(comm, plan, x, src, lambda t: [t.owned])
            mine = x[tile.owned.slices()] if tile is not None else None
            comm.wait(works)
            return mine
        if tile is None:
            return None
        dtype = _recv_dtype(comm, src)
        room = _room(tile, plan.spec.input_shape)
        buffer = torch.empty(room.shape, dtype=dtype, device=comm.device)
        part = buffer[tile.owned.within(room)]
        works = _recv_in_place(comm, part, tile.owned, plan.spec.input_shape, src, "scatter")
        if works is not None:
            _mark_room(buffer)  # halos can later land around the shard
            comm.wait(works)
            return part
        part = torch.empty(tile.owned.shape, dtype=dtype, device=comm.device)
        comm.wait(recv_box(comm, part, tile.owned, plan.spec.input_shape, src, "scatter"))
        return part


# A buffer haloconv allocated around a shard (received input, conv outputs) carries this
# mark: its margins beyond the shard are free, so a halo can be written there and the
# window used in place.  The mark lives on the buffer itself (no registry to outlive it).
_ROOM = "_haloconv_halo_room"


def _mark_room(t: torch.Tensor) -> None:
    setattr(t, _ROOM, True)


def _has_room(t: torch.Tensor) -> bool:
    return getattr(t, _ROOM, False) is True


def _backing(x_local: torch.Tensor, owned: Box) -> tuple[torch.Tensor, Box] | None:
    """The contiguous tensor ``x_local`` is a box-slice of, and the box it covers.  None for
    an empty shard (a tile that owns nothing on some axis): its offset locates nothing."""
    base = x_local._base
    if (base is None or x_local.numel() == 0 or base.dim() != x_local.dim() or not base.is_contiguous()
            or x_local.stride() != base.stride()):
        return None
    off = x_local.storage_offset() - base.storage_offset()
    idx = []
    for n in reversed(base.shape):
        idx.append(off % n)
        off //= n
    idx.reverse()
    lo = tuple(o - i for o, i in zip(owned.lo, idx))
    return base, Box(lo, tuple(l + n for l, n in zip(lo, base.shape)))


def _in_place_window(tile: Tile, x_local: torch.Tensor, input_shape, halo: bool = True
                     ) -> tuple[torch.Tensor, bool] | None:
    """(window view, writable) when the window can be a view of the shard itself or of the
    buffer it sits in; with ``halo``, only where the halo can be written (or is there)."""
    for p in tile.pieces:  # own data must already sit where the window wants it
        if p.owner == tile.rank and (
            any(st != 1 for st in p.steps)
            or tuple(l - w for l, w in zip(p.src.lo, tile.window.lo)) != p.dst.lo
        ):
            return None
    full = Box((0,) * len(input_shape), tuple(input_shape))
    holders = [(x_local, tile.owned, False)]
    back = _backing(x_local, tile.owned)
    if back is not None:
        holders.append((back[0], back[1], _has_room(back[0])))
    for t, box, writable in holders:
        # a full input (e.g. the master's x) already holds every halo: nothing to write
        if box.contains(tile.window) and (not halo or writable or box == full):
            return t[tile.window.within(box)], writable
    return None


def post_halos(comm: Comm, plan: Plan, x_local: torch.Tensor | None) -> tuple[list, list, list]:
    """Post the sends of what our neighbours need from our shard (in their pieces' order)
    and the receives of our halo pieces.  Returns (works, kept send buffers, [(piece, buffer)])."""
    tile = plan.tile_of(comm.rank)
    works, keep, incoming = [], [], []
    if tile is None:
        return works, keep, incoming
    for t in plan.tiles:
        if t.rank == comm.rank:
            continue
        for p in t.pieces:
            if p.owner == comm.rank:
                data = x_local[p.src.within(tile.owned)].contiguous()
                keep.append(data)
                works.append(comm.isend(data, t.rank, "halo"))
    for p in tile.halo_pieces:
        buf = torch.empty(p.src.shape, dtype=x_local.dtype, device=x_local.device)
        incoming.append((p, buf))
        works.append(comm.irecv(buf, p.owner, "halo"))
    return works, keep, incoming


def build_window(tile: Tile, x_local: torch.Tensor, incoming: list, works: list = ()) -> torch.Tensor:
    """A new window: zeros, our own pieces, then (once ``works`` are done) the halo pieces."""
    window = x_local.new_zeros(tile.window.shape)
    for p in tile.pieces:
        if p.owner == tile.rank:
            window[p.dst.slices()] = piece_data(x_local[p.src.within(tile.owned)], p)
    Comm.wait(works)
    _fill(window, incoming)
    return window


def halo_exchange(comm: Comm, plan: Plan, x_local: torch.Tensor | None, copy: bool = False) -> torch.Tensor | None:
    """This rank's conv window: its own input plus the halo pieces from their owners.

    When the shard sits in a buffer with room around it (as haloconv allocates them), the
    halos are written into that room and the window is a view: no copy of the shard.
    ``copy=True`` always makes a new window (autograd saves it: nothing may write into it)."""
    tile = plan.tile_of(comm.rank)
    _check_shard(x_local, tile, "x_local")
    with comm.phase("halo"):
        works, keep, incoming = post_halos(comm, plan, x_local)
        if tile is None:
            comm.wait(works)
            return None
        in_place = None if copy else _in_place_window(tile, x_local, plan.spec.input_shape, halo=bool(incoming))
        if in_place is None:
            return build_window(tile, x_local, incoming, works)
        window, writable = in_place
        comm.wait(works)
        if writable:
            _fill(window, incoming)
        return window


def halo_reduce(comm: Comm, plan: Plan, g_window: torch.Tensor | None) -> torch.Tensor | None:
    """Backward of halo_exchange: the gradient of every piece of this rank's window goes
    back to the piece's owner, who adds it into the gradient of its shard."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("halo"):
        works, keep = [], []
        if tile is None:
            return None
        for p in tile.halo_pieces:  # in the order the owner posts its receives
            data = piece_grad(g_window[p.dst.slices()], p).contiguous()
            keep.append(data)
            works.append(comm.isend(data, p.owner, "halo"))
        incoming = []
        for t in plan.tiles:
            if t.rank == comm.rank:
                continue
            for p in t.pieces:
                if p.owner == comm.rank:
                    buf = torch.empty(p.src.shape, dtype=g_window.dtype, device=g_window.device)
                    incoming.append((p, buf))
                    works.append(comm.irecv(buf, t.rank, "halo"))
        g = g_window.new_zeros(tile.owned.shape)
        for p in tile.pieces:
            if p.owner == comm.rank:
                g[p.src.within(tile.owned)] += piece_grad(g_window[p.dst.slices()], p)
        comm.wait(works)
        for p, buf in incoming:
            g[p.src.within(tile.owned)] += buf
        return g


def scatter_windows(comm: Comm, plan: Plan, x: torch.Tensor | None, src: int = 0,
                    pending: list | None = None) -> torch.Tensor | None:
    """exchange='master': the source sends every rank each piece of its window.

    On the source, with ``pending`` given, the sends are left in flight (appended to it)
    so the source can compute meanwhile."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("scatter"):
        if comm.rank == src:
            x = x.contiguous()
            works, keep = _send_to_workers(
                comm, plan, x, src, lambda t: [p.src for st in plan.subtiles(t, src) for p in st.pieces]
            )
            window = assemble_window(x, tile) if tile is not None else None  # a view when it can be
            if pending is None:
                comm.wait(works)
            else:
                pending.append((works, keep))
            return window
        if tile is None:
            return None
        (st, window, works, bufs), = _post_window_receives(comm, plan, tile, src)
        comm.wait(works)
        _fill(window, bufs)
        return window


def _post_window_receives(comm: Comm, plan: Plan, tile: Tile, src: int) -> list:
    """Post the receives of every part of this rank's window (exchange='master')."""
    dtype = _recv_dtype(comm, src)
    return [_post_piece_receives(comm, plan, st, dtype, src) for st in plan.subtiles(tile, src)]


def _post_piece_receives(comm: Comm, plan: Plan, st: Tile, dtype: torch.dtype, src: int) -> tuple:
    """(tile, window, works, buffers): the receives of every piece of ``st``'s window from ``src``."""
    shape = plan.spec.input_shape
    covered = sum(p.dst.volume for p in st.pieces) == st.window.volume
    window = (torch.empty if covered else torch.zeros)(st.window.shape, dtype=dtype, device=comm.device)
    works, bufs = [], []
    for p in st.pieces:
        direct = None
        if all(x == 1 for x in p.steps):
            direct = _recv_in_place(comm, window[p.dst.slices()], p.src, shape, src, "scatter")
        if direct is not None:
            works += direct
        else:
            b = torch.empty(p.src.shape, dtype=dtype, device=comm.device)
            bufs.append((p, b))
            works += recv_box(comm, b, p.src, shape, src, "scatter")
    return st, window, works, bufs


# -- dynamic scheduling: tiles handed out one by one to whichever worker is free ----------------
def broadcast_weights(comm: Comm, plan: Plan, weight, bias, dtype: torch.dtype, src: int = 0, to=None):
    """The whole weight (and bias) from ``src`` to every rank (each may compute any tile);
    on ``src``, ``to``: only to these ranks (a gloo send waits for its receiver, so one
    stalled rank would hold up the others' sends)."""
    with comm.phase("weights"):
        if comm.rank == src:
            parts = [weight.contiguous()] + ([bias.contiguous()] if bias is not None else [])
            ranks = [r for r in range(comm.world) if r != src] if to is None else to
            comm.wait([comm.isend(t, r, "weights") for r in ranks for t in parts])
            return weight, bias
        w = torch.empty(plan.spec.weight_shape, dtype=dtype, device=comm.device)
        b = torch.empty(plan.spec.out_channels, dtype=dtype, device=comm.device) if plan.spec.has_bias else None
        comm.wait([comm.irecv(t, src, "weights") for t in (w, b) if t is not None])
        return w, b


def hand_out(comm: Comm, plan: Plan, x: torch.Tensor | None, index: int, dst: int, out: torch.Tensor, keep: list):
    """Master: tell ``dst`` to compute tile ``index`` (-1: stop), send its window's pieces and
    post the receive of its output; returns the receive works and the buffer (or None)."""
    code = torch.tensor([index], dtype=torch.int64, device=comm.device)
    keep.append(code)
    comm.wait([comm.isend(code, dst, "control")])
    if index < 0:
        return [], None
    tile = plan.tiles[index]
    works = []
    for p in tile.pieces:
        works += send_box(comm, x, p.src, dst, "scatter", keep)
    comm.wait(works)
    buf, works = _post_output_receive(comm, out, tile.out, dst)
    return works, buf


def dynamic_worker(comm: Comm, plan: Plan, weight, bias, torch_backend, dtype: torch.dtype, src: int = 0) -> int:
    """A worker's side: tile after tile as the master hands them out, until told to stop.
    Returns the tiles done."""
    done = 0
    while True:
        code = torch.empty(1, dtype=torch.int64, device=comm.device)
        comm.irecv(code, src, "control").wait()
        index = int(code.item())
        if index < 0:
            return done
        with comm.phase("scatter"):
            st, window, works, bufs = _post_piece_receives(comm, plan, plan.tiles[index], dtype, src)
            comm.wait(works)
            _fill(window, bufs)
        y = compute(comm, plan, window, weight, bias, torch_backend, tile=st)
        with comm.phase("gather"):
            keep: list = []
            comm.wait(send_box(comm, y, st.out, src, "gather", keep, held=st.out, shape=plan.spec.output_shape))
        done += 1


def _fill(window: torch.Tensor, bufs: list) -> None:
    for p, b in bufs:
        window[p.dst.slices()] = piece_data(b, p)


def windows_compute_gather(
    comm: Comm, plan: Plan, weight, bias, torch_backend, src: int = 0
) -> None:
    """A worker's whole share with exchange='master': receive its window part by part,
    compute each part as soon as it is in, send each output back as soon as it is done."""
    tile = plan.tile_of(comm.rank)
    if tile is None:
        return
    with comm.phase("scatter"):
        entries = _post_window_receives(comm, plan, tile, src)
    sends, keep = [], []
    for st, window, works, bufs in entries:
        with comm.phase("scatter"):
            comm.wait(works)
            _fill(window, bufs)
        y = compute(comm, plan, window, weight, bias, torch_backend, tile=st)
        with comm.phase("gather"):
            sends += send_box(comm, y, st.out, src, "gather", keep, held=st.out, shape=plan.spec.output_shape)
    with comm.phase("gather"):
        comm.wait(sends)


def compute(
    comm: Comm, plan: Plan, window: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None,
    torch_backend: object | None = None,
    tile: Tile | None = None,
) -> torch.Tensor | None:
    """Convolve this rank's window (or that of ``tile``, a part of it) with its filters
    (weight/bias: the full tensors, or already this tile's slice)."""
    tile = tile or plan.tile_of(comm.rank)
    if tile is None:
        return None
    t0 = time.perf_counter()
    with comm.phase("compute"):
        c0, c1 = plan.weight_box(tile)
        if weight.shape[0] == plan.spec.out_channels:
            weight = weight[c0:c1]
            bias = None if bias is None else bias[c0:c1]
        if torch_backend is None:
            torch_backend = kernels.select_backend(plan.spec, window, weight, bias)
        y = one_tile.compute_tile(plan, tile, window, weight, bias, torch_backend)
        if y._base is not None:  # the rows computed beyond the tile are room for the next halo
            _mark_room(y._base)
        comm.pace(t0)
        return y


def post_gather(comm: Comm, plan: Plan, out: torch.Tensor, dst: int = 0) -> list:
    """On ``dst``: post the receives of every other rank's output box, straight into
    ``out`` where its runs are contiguous.  Returns what finish_gather needs."""
    posted = []
    for tile in plan.tiles:
        if tile.rank == dst:
            continue
        for t in plan.subtiles(tile, dst):
            posted.append((t, *_post_output_receive(comm, out, t.out, t.rank)))
    return posted


def _post_output_receive(comm: Comm, out: torch.Tensor, box: Box, src: int) -> tuple:
    """(buffer or None, works): the receive of ``box`` of ``out`` from ``src``, straight into
    ``out`` by contiguous run, or into a buffer when the box travels packed."""
    chunks = transfer_chunks(box, out.shape, out.element_size())
    if len(chunks) == 1 and not out[box.slices()].is_contiguous():
        buf = torch.empty(box.shape, dtype=out.dtype, device=out.device)
        return buf, [comm.irecv(buf, src, "gather")]
    return None, [comm.irecv(out[c.slices()], src, "gather") for c in chunks]


def finish_gather(comm: Comm, plan: Plan, posted: list, out: torch.Tensor, y_local: torch.Tensor | None,
                  dst: int = 0, progress: Counter | None = None) -> torch.Tensor:
    """On ``dst``: write its own output box, then wait for the others posted by post_gather
    (each one that lands, and its own, counted to ``progress``)."""
    with comm.phase("gather"):
        tile = plan.tile_of(dst)
        if tile is not None:
            out[tile.out.slices()] = y_local
        if progress is not None:
            progress.tick()
        for t, buf, works in posted:
            comm.wait(works)
            if buf is not None:
                out[t.out.slices()] = buf
            if progress is not None:
                progress.tick()
    return out


def gather(
    comm: Comm, plan: Plan, y_local: torch.Tensor | None, dst: int = 0, out: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Every rank's output box into the full result on ``dst`` (None elsewhere)."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("gather"):
        if comm.rank != dst:
            if tile is not None:
                keep: list = []
                comm.wait(send_box(comm, y_local, tile.out, dst, "gather", keep, held=tile.out,
                                   shape=plan.spec.output_shape))
            return None
        if out is None:
            out = torch.empty(plan.spec.output_shape, dtype=y_local.dtype, device=y_local.device)
        posted = post_gather(comm, plan, out, dst)
    return finish_gather(comm, plan, posted, out, y_local, dst)


# -- backward: the adjoint of scatter -> halo exchange -> compute -> gather --------------------
def scatter_grad(comm: Comm, plan: Plan, grad: torch.Tensor | None, src: int = 0) -> torch.Tensor | None:
    """Adjoint of gather: from the output's gradient on ``src``, every rank's output box of it."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("scatter"):
        if comm.rank == src:
            grad = grad.contiguous()
            works, keep = _send_to_workers(comm, plan, grad, src, lambda t: [t.out])
            comm.wait(works)
            return None if tile is None else grad[tile.out.slices()]
        if tile is None:
            return None
        buf = torch.empty(tile.out.shape, dtype=_recv_dtype(comm, src), device=comm.device)
        comm.wait(recv_box(comm, buf, tile.out, plan.spec.output_shape, src, "scatter"))
        return buf


def tile_backward(comm: Comm, plan: Plan, window: torch.Tensor | None, weight: torch.Tensor | None,
                  grad: torch.Tensor | None, needs) -> tuple:
    """This rank's (window, filter, bias) gradients from its output box's gradient."""
    tile = plan.tile_of(comm.rank)
    if tile is None:
        return None, None, None
    with comm.phase("compute"):
        return one_tile.tile_backward(plan, tile, window, weight, grad, needs)


def reduce_grads(comm: Comm, plan: Plan, grads: tuple, whole: tuple | None = None, dst: int = 0) -> None:
    """Adjoint of scatter + halo exchange for the master's engine: every rank's window, filter
    and bias gradients (``grads``, None where not wanted) go to ``dst``, which adds them into
    ``whole`` = (gx, gw, gb) in rank order (the same bits every run)."""
    tile = plan.tile_of(comm.rank)
    with comm.phase("gather"):
        if comm.rank != dst:
            if tile is not None:
                keep = [g.contiguous() for g in grads if g is not None]
                comm.wait([comm.isend(g, dst, "gather") for g in keep])
            return
        incoming = {}
        for t in plan.tiles:
            if t.rank == dst:
                incoming[t.rank] = grads
                continue
            c0, c1 = plan.weight_box(t)
            shapes = (t.window.shape, (c1 - c0, *plan.spec.weight_shape[1:]), (c1 - c0,))
            bufs = tuple(None if w is None else torch.empty(shape, dtype=w.dtype, device=w.device)
                         for w, shape in zip(whole, shapes))
            works = [comm.irecv(b, t.rank, "gather") for b in bufs if b is not None]
            incoming[t.rank] = (bufs, works)
        for t in plan.tiles:
            if t.rank == dst:
                add_tile_grads(plan, t, *whole, *grads)
            else:
                bufs, works = incoming[t.rank]
                comm.wait(works)
                add_tile_grads(plan, t, *whole, *bufs)


def probe(comm: Comm, spec, dtype: torch.dtype, method: str, repeat: int, busy: int | None = None,
          torch_backend: str | None = None) -> tuple[float, float]:
    """(best, total) seconds of this rank computing ``spec`` ``repeat`` times back to back on
    random data (at its pace): the measures behind LocalCluster.speeds and .throughput.
    ``torch_backend``: the torch conv backend (kernels.backend_name) the caller selected, which
    a tile computes with; torch itself would pick at this rank's thread count, and for some
    1-D, 1x1 and 3-D shapes pick another.  Ranks from ``busy`` on stay idle and return (0, 0)."""
    if busy is not None and comm.rank >= busy:
        return 0.0, 0.0
    g = torch.Generator().manual_seed(comm.rank)
    x = torch.randn(spec.input_shape, generator=g, dtype=dtype)
    w = torch.randn(spec.weight_shape, generator=g, dtype=dtype)
    once = as_one_tile(method, spec, x, w, None if torch_backend is None else kernels.backend_of(torch_backend))
    once()  # warm-up: buffers faulted in, the primitive built
    best, t_start = float("inf"), time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        once()
        comm.pace(t0)
        best = min(best, time.perf_counter() - t0)
    return best, time.perf_counter() - t_start
