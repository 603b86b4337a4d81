"""Partition names and the extents they split: which of (N, C_out units, *spatial) a
name splits, and the most even factorisation of a worker count over axes."""

from __future__ import annotations

from collections.abc import Sequence

from haloconv.planning.spec import ConvSpec

# name -> which of the (N, C_out, *spatial) dims it splits; resolved per spatial rank
PARTITION_ALIASES = {"horizontal": "rows", "vertical": "cols"}
PARTITIONS = ("auto", "batch", "channels", "rows", "horizontal", "cols", "vertical", "depth", "grid")


def _axis_names(ndim: int) -> tuple[str, ...]:
    return {1: ("W",), 2: ("H", "W"), 3: ("D", "H", "W")}[ndim]


def _channel_units(spec: ConvSpec) -> int:
    """Output channels split in whole groups (a tile never cuts a group)."""
    return spec.groups if spec.groups > 1 else spec.out_channels


def _extents(spec: ConvSpec) -> tuple[int, ...]:
    return (spec.batch, _channel_units(spec), *spec.out_spatial)


def _named_axis(name: str, ndim: int) -> int:
    """Index into (N, C, *spatial) of the spatial axis a partition name splits."""
    table = {
        1: {"cols": 2},
        2: {"rows": 2, "cols": 3},
        3: {"depth": 2, "rows": 3, "cols": 4},
    }[ndim]
    if name not in table:
        valid = sorted(table) + ["batch", "channels", "grid", "auto"]
        raise ValueError(
            f"partition={name!r} is not available for {ndim}-D inputs; choose one of {valid}"
        )
    return table[name]


def _factorizations(n: int, k: int) -> list[tuple[int, ...]]:
    if k == 1:
        return [(n,)]
    out = []
    for d in range(1, n + 1):
        if n % d == 0:
            out.extend((d, *rest) for rest in _factorizations(n // d, k - 1))
    return out


def even_grid(workers: int, extents: Sequence[int]) -> tuple[int, ...] | None:
    """The most even factorisation of ``workers`` over len(extents) axes with no axis split
    beyond its extent (outer axes take the larger factors: row bands copy less), or None."""
    fits = [f for f in _factorizations(workers, len(extents)) if all(c <= e for c, e in zip(f, extents))]
    return min(fits, key=lambda f: (max(f), tuple(-c for c in f))) if fits else None
