"""Hypothesis strategies that reach the hard cases of a split convolution, and the
classes a case belongs to, read from its Plan (not from what the strategy meant to draw),
so a test can assert that every class was reached."""

from __future__ import annotations

import math
from collections import Counter

import torch
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from conftest import torch_plan
from haloconv.tiling.spec import ConvSpec

MODES = ("zeros", "reflect", "replicate", "circular")
SPATIAL_PARTS = ("rows", "cols", "grid")
# what every engine's property test must reach (tests assert it after the examples ran)
CLASSES = (
    *(f"{m}+{p}" for m in MODES for p in SPATIAL_PARTS),   # every padding mode meets every spatial split
    *(f"{m}+thin" for m in MODES),                         # ... and tiles thinner than their halo
    "stride>1 uneven split", "empty owned tile", "halo from several owners", "channels>=32", "size>=128",
    "batch", "channels", "hybrid",
)


@st.composite
def hard_case(draw, ndim: int | None = None, max_workers: int = 6):
    """A case dict (as test_conv_exact.conv_case) built so the classes above come up often."""
    nd = draw(st.sampled_from((1, 2, 2, 2, 3))) if ndim is None else ndim
    shape_kind = draw(st.sampled_from(("small", "small", "small", "wide", "deep", "tiny")))
    groups = draw(st.sampled_from((1, 1, 2, 4)))
    depthwise = groups > 1 and draw(st.booleans())
    # "deep": channels up to 64 (on short inputs), "wide": sizes up to 256 (few channels)
    per_group = {"small": (1, 4), "wide": (1, 2), "deep": (32 // groups, 64 // groups), "tiny": (1, 2)}[shape_kind]
    c_in = groups * (1 if depthwise else draw(st.integers(*per_group)))
    c_out = groups * (1 if depthwise else draw(st.integers(*per_group)))
    max_len = {"small": {1: 60, 2: 28, 3: 10}, "wide": {1: 2048, 2: 256, 3: 24}, "deep": {1: 40, 2: 20, 3: 8},
               "tiny": {1: 6, 2: 6, 3: 5}}[shape_kind][nd]
    kernel = tuple(draw(st.integers(1, 5)) for _ in range(nd))
    dilation = tuple(draw(st.sampled_from((1, 1, 2, 3))) for _ in range(nd))
    spatial = tuple(draw(st.integers(1, max_len)) for _ in range(nd))
    if draw(st.integers(0, 4)):  # mostly inputs the kernel fits in (torch refuses most others)
        spatial = tuple(max(n, (k - 1) * d + 1) for n, k, d in zip(spatial, kernel, dilation))
    mode = draw(st.sampled_from(MODES))
    padding = draw(st.one_of(st.sampled_from(("same", "valid")), st.integers(0, 4),
                             st.tuples(*(st.integers(0, 4) for _ in range(nd)))))
    stride = 1 if padding == "same" else tuple(draw(st.sampled_from((1, 2, 3))) for _ in range(nd))
    partition = draw(st.sampled_from(("rows", "cols", "grid", "rows", "cols", "grid", "grid2", "grid2", "batch",
                                      "channels", "tuple")))
    if partition == "rows" and nd == 1:
        partition = "cols"
    workers = draw(st.integers(2, max_workers))
    if partition == "grid2":  # two spatial axes split (the cost-minimal 'grid' often splits one)
        partition = (1, 1, 2, 2, 1)[: nd + 2] if nd >= 2 and max_workers >= 4 else "grid"
        workers = max(workers, 4) if partition != "grid" else workers
    if partition == "tuple":  # a hybrid: samples or filters, and a spatial axis
        counts = [1] * (nd + 2)
        counts[draw(st.integers(0, 1))] = 2
        counts[2 + draw(st.integers(0, nd - 1))] = 2
        partition = tuple(counts)
        workers = max(workers, math.prod(counts))
        if workers > max_workers:
            partition, workers = "grid", max_workers
    return dict(
        n=draw(st.integers(1, 3)), c_in=c_in, c_out=c_out, groups=groups, kernel=kernel, dilation=dilation,
        mode=mode, padding=padding, stride=stride, spatial=spatial, dtype=draw(st.sampled_from(
            (torch.float32, torch.float64))), bias=draw(st.booleans()), workers=workers, partition=partition,
    )


def classes_of(plan) -> set[str]:
    """The classes of CLASSES this plan is a case of."""
    spec = plan.spec
    found: set[str] = set()
    sp = plan.splits[2:]
    split_axes = [i for i, c in enumerate(sp) if c > 1]
    if split_axes:
        kind = "grid" if len(split_axes) > 1 else ("rows" if split_axes[0] == 0 and spec.ndim > 1 else "cols")
        found.add(f"{spec.padding_mode}+{kind}")
        # some tile owns fewer rows than a neighbour's halo reaches: the halo spans it
        if any(t.owned.shape[2 + a] < spec.axis(a).span - 1 for t in plan.tiles for a in split_axes):
            found.add(f"{spec.padding_mode}+thin")
        if any(spec.stride[a] > 1 and len({t.out.shape[2 + a] for t in plan.tiles}) > 1 for a in split_axes):
            found.add("stride>1 uneven split")
    if any(t.owned.volume == 0 for t in plan.tiles):
        found.add("empty owned tile")
    # a halo reaching past the next tile: one side of it drawn from two or more owners
    # (circular wrap-around pieces lie on the far side in coordinates: not counted)
    if spec.padding_mode != "circular" and any(_owners_on_one_side(t, 2 + a) >= 2
                                               for t in plan.tiles for a in split_axes):
        found.add("halo from several owners")
    if spec.in_channels >= 32 or spec.out_channels >= 32:
        found.add("channels>=32")
    if max(spec.spatial) >= 128:
        found.add("size>=128")
    if plan.splits[0] > 1:
        found.add("batch")
    if plan.splits[1] > 1:
        found.add("channels")
    if sum(c > 1 for c in plan.splits) > 1 and (plan.splits[0] > 1 or plan.splits[1] > 1):
        found.add("hybrid")
    return found


def _owners_on_one_side(tile, dim: int) -> int:
    below = {p.owner for p in tile.halo_pieces if p.src.hi[dim] <= tile.owned.lo[dim]}
    above = {p.owner for p in tile.halo_pieces if p.src.lo[dim] >= tile.owned.hi[dim]}
    return max(len(below - {tile.rank}), len(above - {tile.rank}))


class Reached:
    """The classes the examples of one test reached: hypothesis.event for the statistics,
    and a Counter to assert on."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def record(self, plan) -> None:
        for c in sorted(classes_of(plan)):
            if currently_in_test_context():  # hypothesis' statistics; a fixed case counts here only
                event(c)
            self.counts[c] += 1

    def missing(self, classes=CLASSES) -> list[str]:
        return [c for c in classes if not self.counts[c]]


def plan_for(x, w, b, case, workers=None):
    """The Plan haloconv.conv makes for ``case`` (partition given explicitly)."""
    part = case["partition"]
    if isinstance(part, tuple):  # counts beyond an axis's extent are refused: clamp them
        spec = ConvSpec.from_args(tuple(x.shape), tuple(w.shape), None, stride=case["stride"],
                                  padding=case["padding"], dilation=case["dilation"], groups=case["groups"],
                                  padding_mode=case["mode"])
        extents = (x.shape[0], case["groups"] if case["groups"] > 1 else case["c_out"], *spec.output_shape[2:])
        part = tuple(min(c, e) for c, e in zip(part, extents))
    return torch_plan(tuple(x.shape), tuple(w.shape), None if b is None else tuple(b.shape),
                         stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                         groups=case["groups"], padding_mode=case["mode"], partition=part,
                         workers=workers or case["workers"])
