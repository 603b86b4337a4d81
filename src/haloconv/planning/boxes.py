"""The values a Plan is made of: boxes of a tensor, the pieces of a tile's window, and
the tiles themselves (see docs/architecture.md, "planning")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Box:
    """A half-open N-D box [lo, hi)."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(h - l for l, h in zip(self.lo, self.hi))

    @property
    def volume(self) -> int:
        return math.prod(self.shape)

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(l, h) for l, h in zip(self.lo, self.hi))

    def within(self, origin: Box) -> tuple[slice, ...]:
        """Slices of this box inside a tensor that holds ``origin``."""
        return tuple(slice(l - o, h - o) for l, h, o in zip(self.lo, self.hi, origin.lo))

    def contains(self, other: Box) -> bool:
        return all(a <= c and d <= b for a, b, c, d in zip(self.lo, self.hi, other.lo, other.hi))

    def __str__(self) -> str:
        return "[" + ", ".join(f"{l}:{h}" for l, h in zip(self.lo, self.hi)) + "]"


@dataclass(frozen=True)
class Piece:
    """A block of a tile's window filled from one owner's input.

    ``src`` is in input coordinates and lies inside the owner's owned box; ``dst`` is in
    window coordinates.  Per dim, step 1 copies, -1 copies reversed (reflect padding),
    0 broadcasts the single source index over dst (replicate padding).
    """

    owner: int
    src: Box
    dst: Box
    steps: tuple[int, ...]

    @property
    def elements(self) -> int:
        """Elements that move from the owner: the source volume."""
        return self.src.volume


@dataclass(frozen=True)
class Tile:
    """One worker's share: its output box and everything its input is made of."""

    rank: int
    out: Box  # (N, C_out, *spatial) in output coordinates
    owned: Box  # (N, C_in, *spatial): input this worker holds
    needed: Box  # input its outputs read, source coordinates (may extend into padding)
    window: Box  # input handed to the conv backend (needed + alignment, see geometry)
    first: tuple[int, ...]  # per spatial axis: first kept output of the computed window
    groups: int  # conv groups within this tile
    pieces: tuple[Piece, ...]

    @property
    def halo_pieces(self) -> tuple[Piece, ...]:
        return tuple(p for p in self.pieces if p.owner != self.rank)

    @property
    def halo_elements(self) -> int:
        return sum(p.elements for p in self.halo_pieces)

    @property
    def halo_sources(self) -> tuple[int, ...]:
        return tuple(sorted({p.owner for p in self.halo_pieces}))

    @property
    def window_is_view(self) -> bool:
        """True when the window is a plain slice of the owned input of the whole tensor:
        no padding in it and no reversed/broadcast pieces (a shared-memory engine can
        hand the backend a view instead of a copy)."""
        spatial_ok = all(
            0 <= lo and hi <= n
            for lo, hi, n in zip(self.window.lo[2:], self.window.hi[2:], self._input_spatial)
        )
        return spatial_ok and all(all(s == 1 for s in p.steps) for p in self.pieces)

    # the input's spatial shape, for window_is_view; kept out of repr/eq
    _input_spatial: tuple[int, ...] = field(default=(), repr=False, compare=False)
