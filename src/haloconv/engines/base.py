"""What every engine shares: assembling a tile's window from pieces, and run statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from haloconv import text
from haloconv.compute.tile import compute_tile
from haloconv.planning.boxes import Piece, Tile
from haloconv.planning.plan import Plan, make_plan


@dataclass
class WorkerStats:
    """What one worker did: its tile, and wall time per phase in seconds."""

    rank: int
    tile_shape: tuple[int, ...]
    halo_elements: int
    seconds: dict[str, float] = field(default_factory=dict)
    # per phase: bytes_sent, bytes_recv, messages_sent, messages_recv, seconds (processes engine)
    traffic: dict[str, dict[str, float]] | None = None

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


@dataclass
class Execution:
    """The result of running a Plan, with what it cost."""

    output: torch.Tensor
    plan: Plan
    engine: str
    backend: str
    wall_seconds: float
    workers: list[WorkerStats]
    failures: list[str] = field(default_factory=list)  # worker faults survived on the way (processes engine)

    def table(self) -> str:
        seen = {p for w in self.workers for p in w.seconds}
        order = ("weights", "scatter", "halo", "compute", "write", "gather")  # the order they happen in
        phases = [p for p in order if p in seen] + sorted(seen.difference(order))
        head = ["rank", "tile", "halo elems", *(f"{p} s" for p in phases), "total s"]
        rows = [
            [
                str(w.rank),
                "x".join(map(str, w.tile_shape)),
                f"{w.halo_elements:,}",
                *(f"{w.seconds.get(p, 0.0):.4f}" for p in phases),
                f"{w.total_seconds:.4f}",
            ]
            for w in self.workers
        ]
        return text.table(head, rows) + f"\nengine={self.engine} backend={self.backend} wall={self.wall_seconds:.4f}s"


def execution_from_reports(out, plan: Plan, engine: str, backend: str, wall: float,
                           traffic: dict[int, dict]) -> Execution:
    """An Execution from each rank's traffic report (Comm.report())."""
    stats = []
    for rank in range(plan.workers):
        tile = plan.tile_of(rank)
        tr = traffic[rank]
        stats.append(WorkerStats(
            rank,
            tile.out.shape if tile is not None else (),
            tile.halo_elements if tile is not None else 0,
            {p: v["seconds"] for p, v in tr.items() if p != "control"},
            traffic=tr,
        ))
    return Execution(output=out, plan=plan, engine=engine, backend=backend, wall_seconds=wall, workers=stats)


def piece_data(src: torch.Tensor, piece: Piece) -> torch.Tensor:
    """Shape the owner's block ``src`` (= input[piece.src]) as it lands in the window."""
    flip = [d for d, s in enumerate(piece.steps) if s == -1]
    if flip:
        src = torch.flip(src, flip)
    if any(s == 0 for s in piece.steps):
        src = src.expand(piece.dst.shape)
    return src


def piece_grad(g: torch.Tensor, piece: Piece) -> torch.Tensor:
    """Adjoint of piece_data: the gradient of the owner's block from that of its place in
    the window (broadcast dims summed back, reversed dims flipped back)."""
    bcast = [d for d, s in enumerate(piece.steps) if s == 0]
    if bcast:
        g = g.sum(dim=bcast, keepdim=True)
    flip = [d for d, s in enumerate(piece.steps) if s == -1]
    return torch.flip(g, flip) if flip else g


def add_window_grad(gx: torch.Tensor, tile: Tile, g_window: torch.Tensor) -> None:
    """Adjoint of assemble_window: add the gradient of each piece of ``tile``'s window into
    the whole input's gradient ``gx`` at the piece's source.  Zero-padding parts of the
    window belong to no input and drop out."""
    for piece in tile.pieces:
        gx[piece.src.slices()] += piece_grad(g_window[piece.dst.slices()], piece)


def add_tile_grads(plan: Plan, tile: Tile, gx, gw, gb, g_window, g_w, g_b) -> None:
    """Add one tile's gradients (kernels.conv_tile_backward) into the whole ones (None: not wanted)."""
    c0, c1 = plan.weight_box(tile)
    if gx is not None:
        add_window_grad(gx, tile, g_window)
    if gw is not None:
        gw[c0:c1] += g_w
    if gb is not None:
        gb[c0:c1] += g_b


def assemble_window(x: torch.Tensor, tile: Tile) -> torch.Tensor:
    """The tile's window, read from the whole input ``x`` held in this process.

    A view when the window is a plain slice of ``x``; otherwise one buffer of the
    window's size (zeros where the window is zero padding), filled piece by piece.
    """
    if tile.window_is_view:
        return x[tile.window.slices()]
    return fill_window(tile, lambda box: x[box.slices()], x.new_zeros(tile.window.shape))


def as_one_tile(method: str, spec, x: torch.Tensor, weight: torch.Tensor, torch_backend: object):
    """A call computing all of ``spec`` on ``x`` as a one-tile plan's tile, the way a worker
    computes a tile (its window, ``torch_backend``): what calibrate and the speed probes time."""
    plan = make_plan(spec, "batch", 1, backend=method)
    tile = plan.tiles[0]
    window = assemble_window(x, tile)  # a view when it can be
    return lambda: compute_tile(plan, tile, window, weight, None, torch_backend)


def fill_window(tile: Tile, read, buf: torch.Tensor) -> torch.Tensor:
    """Fill the zeroed window ``buf`` piece by piece; ``read(box)`` returns input[box]
    (a slice of a tensor in memory, or a block read from a file)."""
    for piece in tile.pieces:
        buf[piece.dst.slices()] = piece_data(read(piece.src), piece)
    return buf
