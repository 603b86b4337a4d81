"""Where each rank's shard of an activation lies, layer after layer.

A partition (a name or split counts) resolves to counts over (N, C, *spatial) that do
not depend on the layer's shapes, so every layer of a model splits alike and, with
``ownership='even'`` plans, layer k's output shard is layer k+1's input shard.  The
global shape of an activation is recovered from the shards' shapes (one small
all-reduce), so a rank only ever holds its shard.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from haloconv.engines.spmd.comm import Comm
from haloconv.tiling.boxes import Box
from haloconv.tiling.partition import Partition
from haloconv.tiling.plan import Plan, build, tile_ranges
from haloconv.tiling.spec import ConvSpec


@dataclass(frozen=True)
class Layout:
    """A partition of activations over the ``ranks`` ranks of a process group."""

    partition: str | tuple[int, ...]
    ranks: int
    worker_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind.kind in ("auto", "batch+grid"):
            raise ValueError(f"partition={self.partition!r} is not available for sharded layers; choose one of "
                             "('grid', 'rows', 'cols', 'depth', 'batch', 'channels') or split counts")
        if self.worker_weights is not None:
            w = self.worker_weights
            if len(w) != self.ranks or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in w):
                raise ValueError(f"worker_weights must be {self.ranks} finite positive numbers, got {w!r}")

    @property
    def kind(self) -> Partition:
        return Partition.of(self.partition)  # the one normaliser (names, aliases, counts)

    @property
    def replicated_input(self) -> bool:
        """Filter partition: every rank holds the whole input and computes its filters."""
        k = self.kind
        return k.kind == "channels" or (k.kind == "counts" and k.split[1] > 1)

    def counts(self, ndim: int) -> tuple[int, ...]:
        """Split counts over (N, C, *spatial) for ``ndim`` spatial dims (Partition.layer_counts)."""
        return self.kind.layer_counts(ndim, self.ranks)

    # -- shapes ------------------------------------------------------------------------
    def gather_shapes(self, comm: Comm, local_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Every rank's shard shape (a rank-by-dims all-reduce of small ints)."""
        table = torch.zeros(comm.world, len(local_shape), dtype=torch.int64, device=comm.device)
        table[comm.rank] = torch.tensor(list(local_shape), dtype=torch.int64)
        comm.allreduce(table)
        return [tuple(int(v) for v in row) for row in table.tolist()]

    def global_shape(self, shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
        """The whole activation's shape from its shards' shapes (row-major rank order)."""
        if self.replicated_input:
            return tuple(shapes[0])
        counts = self.counts(len(shapes[0]) - 2)
        coords = list(itertools.product(*(range(c) for c in counts)))
        shape = list(shapes[0])
        for d, c in enumerate(counts):
            if c > 1:
                line = [r for r, co in enumerate(coords) if all(v == 0 for e, v in enumerate(co) if e != d)]
                shape[d] = sum(shapes[r][d] for r in line)
        return tuple(shape)

    def boxes(self, shape: Sequence[int]) -> list[Box]:
        """Each rank's shard of an activation of ``shape`` (the input of a layer, split
        like the output of the one before)."""
        if self.replicated_input:
            return [Box((0,) * len(shape), tuple(shape))] * self.ranks
        # an axis thinner than its split leaves the trailing ranks an empty shard (a deep,
        # downsampled layer): they still take part in every exchange and reduction
        ranges = tile_ranges([shape], self.counts(len(shape) - 2), self.worker_weights, allow_empty=True)
        return [Box(tuple(a for a, _ in r), tuple(b for _, b in r)) for (r,) in ranges]

    def plan(self, spec: ConvSpec) -> Plan:
        return _plan(spec, self.counts(spec.ndim), self.ranks, self.worker_weights)

    def check(self, shapes: Sequence[Sequence[int]], plan: Plan, layer: str) -> None:
        """Every rank's shard must be where the plan expects it (the same error on every rank)."""
        for r, s in enumerate(shapes):
            self.check_local(s, plan, r, layer)

    def check_local(self, shape: Sequence[int], plan: Plan, rank: int, layer: str) -> None:
        """Rank ``rank``'s shard of ``shape`` must be where the plan expects it."""
        want = plan.spec.input_shape if self.replicated_input else plan.tiles[rank].owned.shape
        if tuple(shape) != tuple(want):
            raise ValueError(
                f"{layer}: rank {rank} holds a shard of shape {tuple(shape)} but partition={self.partition!r} puts "
                f"{tuple(want)} there (whole input {plan.spec.input_shape}); use haloconv.nn.shard or local_box"
            )


@functools.lru_cache(maxsize=512)
def _plan(spec: ConvSpec, counts: tuple[int, ...], ranks: int, weights: tuple[float, ...] | None) -> Plan:
    return build(spec, counts, "tuple", ranks, weights, ownership="even")
