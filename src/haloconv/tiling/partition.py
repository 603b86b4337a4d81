"""The partition of a convolution's work: ``Partition``, the one place a partition name or
a tuple of split counts becomes split counts over (N, C_out units, *spatial) for a spec
and a worker count — for the plans of the engines, for the layers of haloconv.nn, for
the scaling projections and for the cost model's candidates.

Adding a partition kind: its name in ``KINDS`` (and the axis it splits in ``_AXES`` when
it splits one), and its counts in ``Partition.counts`` / ``layer_counts`` /
``exact_counts``; nothing else names partition kinds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from haloconv.tiling.spec import ConvSpec

# name -> which of the (N, C_out, *spatial) dims it splits; resolved per spatial rank
PARTITION_ALIASES = {"horizontal": "rows", "vertical": "cols"}
PARTITIONS = ("auto", "batch", "channels", "rows", "horizontal", "cols", "vertical", "depth", "grid")
# the canonical kinds a Partition holds ('counts': explicit split counts)
KINDS = ("auto", "batch", "channels", "rows", "cols", "depth", "grid", "batch+grid", "counts")


def _axis_names(ndim: int) -> tuple[str, ...]:
    return {1: ("W",), 2: ("H", "W"), 3: ("D", "H", "W")}[ndim]


def _channel_units(spec: ConvSpec) -> int:
    """Output channels split in whole groups (a tile never cuts a group)."""
    return spec.groups if spec.groups > 1 else spec.out_channels


def split_extents(spec: ConvSpec) -> tuple[int, ...]:
    """How far each splittable dim reaches: (N, C_out units, *spatial out), a split count
    per dim at most this."""
    return (spec.batch, _channel_units(spec), *spec.out_spatial)


# per spatial rank: the axis (into (N, C, *spatial)) each axis name splits
_AXES = {1: {"cols": 2}, 2: {"rows": 2, "cols": 3}, 3: {"depth": 2, "rows": 3, "cols": 4}}


def named_kinds(ndim: int) -> tuple[str, ...]:
    """The named partitions a convolution of ``ndim`` spatial dims can use (the cost
    model's candidates)."""
    return ("batch", "channels", *_AXES[ndim], *(("grid",) if ndim > 1 else ()))


def _named_axis(name: str, ndim: int) -> int:
    """Index into (N, C, *spatial) of the spatial axis a partition name splits."""
    table = _AXES[ndim]
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


@dataclass(frozen=True)
class Partition:
    """How the work is split: a kind ('auto', 'batch', 'channels', 'rows', 'cols', 'depth',
    'grid', 'batch+grid') or explicit split ``counts`` over (N, C_out units, *spatial)
    (kind 'counts').  A small value in the spirit of JAX's PartitionSpec; it knows nothing
    of shapes until asked for counts.  ``Partition.of`` accepts what the keyword
    ``partition=`` of haloconv.conv / haloconv.plan accepts: a name (aliases 'horizontal'
    = 'rows', 'vertical' = 'cols'), a tuple or list of counts, or a Partition.

    Parameters
    ----------
    kind : str
        One of the names above, or 'counts'.
    split : tuple of int, optional
        The counts over (N, C_out units, *spatial), for kind 'counts'.

    Examples
    --------
    >>> from haloconv import Partition
    >>> Partition.of("horizontal").kind, Partition.of((1, 1, 2, 2)).split
    ('rows', (1, 1, 2, 2))
    >>> Partition.of("diagonal")
    Traceback (most recent call last):
    ...
    ValueError: partition must be one of ..."""

    kind: str
    split: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"partition must be one of {PARTITIONS} or a tuple of counts, got {self.kind!r}")
        if (self.kind == "counts") != (self.split is not None):
            raise ValueError("a Partition has split counts exactly when its kind is 'counts'")

    @classmethod
    def of(cls, value: object) -> Partition:
        """The Partition a ``partition=`` argument names (TypeError/ValueError naming it)."""
        if isinstance(value, Partition):
            return value
        if isinstance(value, str):
            name = PARTITION_ALIASES.get(value, value)
            if name not in KINDS or name == "counts":
                raise ValueError(f"partition must be one of {PARTITIONS} or a tuple of counts, got {value!r}")
            return cls(name)
        if isinstance(value, (tuple, list)):
            if not value or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
                raise ValueError(f"partition as a tuple needs ints over (N, C_out, *spatial), got {value!r}")
            if any(c < 1 for c in value):
                raise ValueError(f"partition counts must be >= 1, got {tuple(value)!r}")
            return cls("counts", tuple(value))
        raise TypeError(f"partition must be one of {PARTITIONS} or a tuple of counts, got {value!r}")

    @property
    def name(self) -> str:
        """What a Plan records as its partition: the kind, 'tuple' for explicit counts."""
        return "tuple" if self.kind == "counts" else self.kind

    def __str__(self) -> str:
        return str(self.split) if self.kind == "counts" else self.kind

    # -- engines: as many workers as the output lets use -----------------------------------
    def counts(self, spec: ConvSpec, workers: int,
               best_grid: Callable[[ConvSpec, int], tuple[int, ...]]) -> tuple[str, tuple[int, ...]]:
        """(kind, split counts) for a plan of ``spec`` on at most ``workers`` workers: a named
        axis is split at most into its extent (the other workers idle); 'grid' is the
        factorisation ``best_grid(spec, workers)`` picks (the planner's halo-least one);
        'auto' is 'batch' when there are samples for every worker, else 'grid'.  Explicit
        counts are checked against the extents and the workers."""
        extents = split_extents(spec)
        dims = len(extents)
        if self.kind == "counts":
            counts = self.split
            if len(counts) != dims:
                raise ValueError(
                    f"partition as a tuple needs {dims} ints (N, C_out, {', '.join(_axis_names(spec.ndim))}), "
                    f"got {counts!r}"
                )
            names = ("N", "C_out groups" if spec.groups > 1 else "C_out", *_axis_names(spec.ndim))
            for c, e, name in zip(counts, extents, names):
                if c > e:
                    raise ValueError(f"partition={counts!r} splits {name} into {c} parts but it has only {e}")
            if math.prod(counts) > workers:
                raise ValueError(f"partition={counts!r} makes {math.prod(counts)} tiles but workers={workers}")
            return "tuple", counts
        kind = self.kind
        if kind == "auto":
            kind = "batch" if spec.batch >= workers else "grid"
        if kind == "grid":
            return "grid", best_grid(spec, workers)
        if kind == "batch+grid":
            raise ValueError("partition='batch+grid' is for scaling projections; plans take 'batch', 'grid' or "
                             "split counts")
        counts = [1] * dims
        ax = {"batch": 0, "channels": 1}[kind] if kind in ("batch", "channels") else _named_axis(kind, spec.ndim)
        counts[ax] = min(workers, extents[ax])
        return kind, tuple(counts)

    # -- haloconv.nn: every layer of a model split alike ------------------------------------
    def layer_counts(self, ndim: int, ranks: int) -> tuple[int, ...]:
        """Split counts over (N, C, *spatial) of ``ndim`` spatial dims for ``ranks`` ranks,
        whatever the shapes (every layer of a model splits alike; an axis thinner than its
        split leaves ranks empty shards): 'grid' is the most even factorisation."""
        counts = [1] * (2 + ndim)
        if self.kind == "counts":
            counts = list(self.split)
            if len(counts) != 2 + ndim:
                raise ValueError(f"partition={self.split!r} needs {2 + ndim} counts (N, C, *spatial)")
            if counts[1] > 1 and math.prod(counts) != counts[1]:
                raise ValueError(f"partition={self.split!r}: filters split with other axes is not supported")
        elif self.kind == "batch":
            counts[0] = ranks
        elif self.kind == "channels":
            counts[1] = ranks
        elif self.kind == "grid":
            counts[2:] = even_grid(ranks, [ranks] * ndim)
        elif self.kind in ("rows", "cols", "depth"):
            counts[_named_axis(self.kind, ndim)] = ranks
        else:
            raise ValueError(f"partition={self.kind!r} is not available for sharded layers; choose one of "
                             "('grid', 'rows', 'cols', 'depth', 'batch', 'channels') or split counts")
        if math.prod(counts) != ranks:
            raise ValueError(f"partition={str(self)!r} makes {math.prod(counts)} shards for {ranks} ranks")
        return tuple(counts)

    # -- scaling projections: all of the workers, or not at all -------------------------------
    def exact_counts(self, spec: ConvSpec, workers: int) -> tuple[int, ...] | None:
        """Split counts that give every one of ``workers`` workers a tile (samples excepted:
        more workers than samples leaves the rest idle), or None when this kind cannot."""
        dims = 2 + spec.ndim
        c = [1] * dims
        out_sp = spec.out_spatial
        if self.kind == "batch":
            c[0] = min(workers, spec.batch)
        elif self.kind == "channels":
            if workers > split_extents(spec)[1]:  # whole groups per worker
                return None
            c[1] = workers
        elif self.kind in ("rows", "cols", "depth"):
            # a 1-D signal's one axis is its rows in the projections
            ax = 2 if spec.ndim == 1 and self.kind == "rows" else _named_axis(self.kind, spec.ndim)
            if workers > out_sp[ax - 2]:
                return None
            c[ax] = workers
        elif self.kind == "grid":
            g = even_grid(workers, out_sp)
            if g is None:
                return None
            c[2:] = g
        elif self.kind == "batch+grid":  # samples first, then tiles within each sample
            nb = math.gcd(workers, spec.batch)
            g = even_grid(workers // nb, out_sp)
            if g is None:
                return None
            c[0], c[2:] = nb, g
        else:
            raise ValueError(f"partition={str(self)!r} has no scaling projection")
        return tuple(c)


def replanned(name: str) -> Partition:
    """The partition to re-plan a plan recorded with partition ``name`` (Plan.partition) on
    another number of workers: the same named kind; anything else — explicit counts
    ('tuple'), the cost model's 'hybrid' and 'single' — no longer fits and becomes 'grid'."""
    named = name in KINDS and name not in ("auto", "batch+grid", "counts")
    return Partition(name) if named else Partition("grid")
