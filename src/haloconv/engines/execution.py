"""The result of running a Plan (any engine, tensors or arrays), with what it cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from haloconv import text
from haloconv.tiling.plan import Plan

if TYPE_CHECKING:
    import numpy as np
    import torch


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
    """The result of running a Plan (haloconv.execute), with what it cost.

    Attributes
    ----------
    output : torch.Tensor or numpy.ndarray
        The whole output (a numpy array from the numpy engine of image filters).
    plan : Plan
    engine : str
    backend : str
        The compute that ran, by the name its users know (e.g. 'torch (oneDNN)').
    wall_seconds : float
    workers : list of WorkerStats
        Per worker: its tile, halo elements, seconds per phase, bytes moved.
    failures : list of str
        Worker faults survived on the way (engine 'processes').

    Examples
    --------
    >>> import numpy as np, haloconv
    >>> x, w = np.ones((1, 1, 16, 16), np.float32), np.ones((1, 1, 3, 3), np.float32)
    >>> ex = haloconv.execute(haloconv.plan(x.shape, w.shape, padding=1, partition="rows", workers=2), x, w)
    >>> ex.engine, [s.tile_shape for s in ex.workers], float(ex.output[0, 0, 8, 8])
    ('threads', [(1, 1, 8, 16), (1, 1, 8, 16)], 9.0)
    """

    output: torch.Tensor | np.ndarray  # a numpy array from the array engine (engines/arrays.py)
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
