"""The values a Plan is made of: boxes of a tensor, the pieces of a tile's window, and
the tiles themselves (see docs/architecture.md, "planning")."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class Box:
    """A half-open N-D box [lo, hi) of a tensor: what a tile owns, needs or computes.

    Parameters
    ----------
    lo, hi : tuple of int
        Per dim; ``lo`` may be negative and ``hi`` past the end for a window that
        reaches into the padding.

    Examples
    --------
    >>> from haloconv import Box
    >>> b = Box((0, 0, 2, 0), (1, 3, 6, 5))
    >>> b.shape, str(b)
    ((1, 3, 4, 5), '[0:1, 0:3, 2:6, 0:5]')
    """

    lo: tuple[int, ...]
    hi: tuple[int, ...]

    # worked out once per box (a plan of many tiles asks each box's shape many times);
    # cached_property writes the instance's __dict__, which a frozen dataclass allows
    @cached_property
    def shape(self) -> tuple[int, ...]:
        return tuple(map(operator.sub, self.hi, self.lo))

    @cached_property
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

    Attributes
    ----------
    owner : int
        The rank whose owned input it comes from.
    src : Box
        Input coordinates, inside the owner's owned box.
    dst : Box
        Window coordinates.
    steps : tuple of int
        Per dim: 1, -1 or 0, as above.

    Examples
    --------
    >>> import haloconv
    >>> t = haloconv.plan((1, 1, 10, 8), (1, 1, 3, 3), padding=1, padding_mode="reflect", partition="rows",
    ...                   workers=2).tiles[0]
    >>> p = t.pieces[0]  # the window's top-left corner: input row and column 1, mirrored
    >>> p.owner, str(p.src), str(p.dst), p.steps
    (0, '[0:1, 0:1, 1:2, 1:2]', '[0:1, 0:1, 0:1, 0:1]', (1, 1, -1, -1))
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
    """One worker's share of a Plan: its output box and everything its input is made of.

    Attributes
    ----------
    rank : int
        The worker.
    out : Box
        The output it computes.
    owned : Box
        The input it holds before any exchange.
    needed : Box
        The input window its outputs read (owned input plus halo; outside the input:
        padding).
    pieces : tuple of Piece
        Where each block of the window comes from (``halo_sources``: the other owners).

    Examples
    --------
    >>> import haloconv
    >>> t = haloconv.plan((1, 1, 10, 8), (1, 1, 3, 3), padding=1, partition="rows", workers=2).tiles[0]
    >>> str(t.out), str(t.owned), str(t.needed), t.halo_sources
    ('[0:1, 0:1, 0:5, 0:8]', '[0:1, 0:1, 0:4, 0:8]', '[0:1, 0:1, -1:6, -1:9]', (1,))
    """

    rank: int
    out: Box  # (N, C_out, *spatial) in output coordinates
    owned: Box  # (N, C_in, *spatial): input this worker holds
    needed: Box  # input its outputs read, source coordinates (may extend into padding)
    window: Box  # input handed to the conv backend (needed + alignment, see geometry)
    first: tuple[int, ...]  # per spatial axis: first kept output of the computed window
    groups: int  # conv groups within this tile
    pieces: tuple[Piece, ...]
    # what the window holds where no piece lands (padding_mode 'constant': its value; the
    # spec shows it, so reprs of plans made before it existed stay as they were)
    fill: float = field(default=0.0, repr=False)

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
