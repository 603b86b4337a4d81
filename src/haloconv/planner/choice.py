"""The planner's choice (partition='auto', backend='auto', a memory budget): every
candidate split (named partitions, grids, two-axis hybrids, a single worker) with every
backend that applies, priced by the cost model (costmodel/cost.py), the cheapest chosen.  The
cost model only prices; what is a candidate and which wins is decided here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from haloconv.compute import backends
from haloconv.costmodel.cost import (
    Prediction,
    Profile,
    count_floor_seconds,
    floor_seconds,
    predict,
    threads_makespan,
    threads_tile_seconds,
    tile_data_bytes,
    weights_floor_seconds,
    work_floor_seconds,
)
from haloconv.options import PlanOptions
from haloconv.tiling.partition import named_kinds, split_extents
from haloconv.tiling.plan import Plan, build, resolve_splits, tile_shapes
from haloconv.tiling.spec import ConvSpec


def candidate_splits(spec: ConvSpec, workers: int) -> list[tuple[str, tuple[int, ...] | str]]:
    """(name, partition) of every candidate: named partitions, grid, and two-axis hybrids."""
    out: list[tuple[str, tuple[int, ...] | str]] = []
    seen = set()
    for name in named_kinds(spec.ndim):
        try:
            _, counts = resolve_splits(spec, name, workers)
        except ValueError:
            continue
        if math.prod(counts) > 1 and counts not in seen:
            seen.add(counts)
            out.append((name, counts))
    ext = split_extents(spec)
    dims = len(ext)
    for a in range(dims):
        for b in range(a + 1, dims):
            for f in range(2, workers):
                if workers % f:
                    continue
                counts = [1] * dims
                counts[a], counts[b] = f, workers // f
                counts = tuple(counts)
                if counts not in seen and all(c <= e for c, e in zip(counts, ext)):
                    seen.add(counts)
                    out.append(("hybrid", counts))
    return out


def supported_backends(spec: ConvSpec, backend: str, weight=None) -> list[str]:
    if backend == "auto":
        return backends.supported(spec, weight)
    backends.check(backend, spec, weight)
    return [backend]


def rank_backends(plan: Plan, prof: Profile, how: PlanOptions, itemsize: int = 4, weight=None) -> list[Prediction]:
    """``plan``'s partition with each candidate backend (``how.backend``: 'auto' for every
    one that applies to the filter values ``weight`` when given), cheapest predicted first,
    those over ``how.memory_budget`` left out."""
    preds = [predict(replace(plan, backend=b), prof, itemsize, how.engine)
             for b in supported_backends(plan.spec, how.backend, weight)]
    preds = [q for q in preds if how.memory_budget is None or q.peak_memory <= how.memory_budget]
    if not preds:
        raise ValueError(f"partition {plan.partition!r} does not fit memory_budget={how.memory_budget} bytes per "
                         "worker")
    return sorted(preds, key=lambda q: q.total_s)


def candidates(spec: ConvSpec, how: PlanOptions, prof: Profile, itemsize: int = 4, weight=None) -> list[Prediction]:
    """Every candidate (partition x backend, plus a single worker) built and predicted,
    cheapest first; those over ``how.memory_budget`` bytes per worker are left out.
    ``how.workers`` and ``how.backend`` are given (planner.resolved)."""
    preds = []
    for name, counts, b in _each_candidate(spec, how, weight):
        pred = predict(_build(spec, name, counts, b, how), prof, itemsize, how.engine)
        if how.memory_budget is None or pred.peak_memory <= how.memory_budget:
            preds.append(pred)
    preds.sort(key=lambda q: q.total_s)
    return preds


def _each_candidate(spec: ConvSpec, how: PlanOptions, weight):
    """(name, split counts, backend) of every candidate, in the order ties are ranked in:
    a single worker first, then candidate_splits, each with every backend."""
    names = supported_backends(spec, how.backend, weight)
    for name, counts in [("single", (1,) * (spec.ndim + 2))] + candidate_splits(spec, how.workers):
        for b in names:
            yield name, counts, b


def _build(spec: ConvSpec, name: str, counts, backend: str, how: PlanOptions) -> Plan:
    single = name == "single"
    return build(spec, counts, name, 1 if single else how.workers, None if single else how.worker_weights,
                 ownership=how.ownership, exchange=how.exchange, backend=backend)


@dataclass(frozen=True)
class Quote:
    """A candidate's predicted time and peak data bytes per worker, before its Plan is built
    (``build()`` builds it): what choosing needs of a candidate."""

    partition: str
    splits: tuple[int, ...]
    workers: int
    backend: str
    total_s: float
    peak_memory: int
    spec: ConvSpec = field(repr=False)
    how: PlanOptions = field(repr=False)

    @property
    def label(self) -> str:  # as Prediction.label
        return f"{self.partition} {'x'.join(map(str, self.splits))} {self.workers}w {self.backend}"

    def build(self) -> Plan:
        return _build(self.spec, self.partition, self.splits, self.backend, self.how)

    @classmethod
    def of(cls, pred: Prediction, how: PlanOptions) -> Quote:
        p = pred.plan
        return cls(p.partition, p.splits, p.workers, p.backend, pred.total_s, pred.peak_memory, p.spec, how)


def quotes(spec: ConvSpec, how: PlanOptions, prof: Profile, itemsize: int = 4, weight=None) -> list[Quote]:
    """Every candidate's Quote, cheapest first (ties in candidate order), those over
    ``how.memory_budget`` left out: ``candidates`` without building the candidates' Plans
    on the threads engine with equal workers, whose prediction needs only the tiles' shapes
    (tiling/plan.tile_shapes: the same figures, in the time of a few tiles)."""
    if how.engine != "threads" or how.worker_weights is not None:
        return [Quote.of(q, how) for q in candidates(spec, how, prof, itemsize, weight)]
    out = []
    for name, counts, b in _each_candidate(spec, how, weight):
        shapes = tile_shapes(spec, counts, how.ownership)
        n = math.prod(counts)
        peak = max(tile_data_bytes(spec, t.window, t.owned, t.out, itemsize) for t in shapes)
        if how.memory_budget is not None and peak > how.memory_budget:
            continue
        total = threads_makespan(prof, n, (threads_tile_seconds(prof, spec, b, n, t.window, t.out, t.groups, t.view,
                                                                itemsize) for t in shapes))
        out.append(Quote(name, tuple(counts), 1 if name == "single" else how.workers, b, total, peak, spec, how))
    return sorted(out, key=lambda q: q.total_s)


def choose(spec: ConvSpec, how: PlanOptions, prof: Profile, itemsize: int = 4, weight=None) -> Plan:
    """The plan with the least predicted time (partition='auto'): candidates()[0], without
    building the losers on the threads engine with equal workers (quotes: one plan built,
    its tiles made only when asked for), or simulating those that cannot win (best)."""
    if how.engine == "threads" and how.worker_weights is None:
        found = quotes(spec, how, prof, itemsize, weight)
        return found[0].build() if found else _none_fits(how)
    ranked = best(spec, how, prof, itemsize, weight, top=1)
    return ranked[0].plan if ranked else _none_fits(how)


def _none_fits(how: PlanOptions):
    raise ValueError(f"no partition fits memory_budget={how.memory_budget} bytes per worker")


def best(spec: ConvSpec, how: PlanOptions, prof: Profile, itemsize: int = 4, weight=None,
         top: int = 12, splits_only: bool = False, ceiling: float | None = None) -> list[Prediction]:
    """The ``top`` cheapest candidates, built and predicted, cheapest first: what ranking
    every candidate gives first (``candidates(...)[:top]``, ties in candidate order),
    without simulating on the processes engine a candidate whose floor is above the
    ``top``-th best found so far, nor building the others on the threads engine with equal
    workers (quotes).  `haloconv plan` prints these.  ``splits_only``: the candidates that
    split over the workers (not a single worker).  ``ceiling``: only those predicted at most
    this many seconds (on the processes engine, those whose floor is above it not built)."""
    if how.engine == "threads" and how.worker_weights is None:
        found = [q for q in quotes(spec, how, prof, itemsize, weight) if not (splits_only and q.partition == "single")
                 and (ceiling is None or q.total_s <= ceiling)]
        return [predict(q.build(), prof, itemsize, how.engine) for q in found[:top]]
    # on the processes engine, every candidate's floors first (from its split counts and
    # tiles' shapes: no plan built), then the candidates in the order of their floors, so the
    # best are found early and the rest, whose floors are above the top-th best, never built
    cands = []
    for order, (name, counts, b) in enumerate(_each_candidate(spec, how, weight)):
        if splits_only and name == "single":
            continue
        floor = 0.0
        if how.engine == "processes":
            floor = max(count_floor_seconds(counts, spec, b, prof), weights_floor_seconds(spec, counts, b, prof,
                                                                                          itemsize))
            if how.worker_weights is None:
                floor = max(floor, work_floor_seconds(spec, tile_shapes(spec, counts, how.ownership), b, prof,
                                                      itemsize))
        cands.append((floor, order, name, counts, b))
    cands.sort(key=lambda c: c[:2])
    kept: list[tuple[float, int, Prediction]] = []  # (total, candidate order, prediction), cheapest first
    for floor, order, name, counts, b in cands:
        bar = kept[-1][0] if len(kept) >= top else ceiling
        if bar is not None and floor > bar:
            break  # the floors ahead are higher still
        p = _build(spec, name, counts, b, how)
        if bar is not None and how.engine == "processes" and floor_seconds(p, prof, itemsize) > bar:
            continue
        pred = predict(p, prof, itemsize, how.engine)
        if (how.memory_budget is None or pred.peak_memory <= how.memory_budget) and (
                ceiling is None or pred.total_s <= ceiling):
            kept.append((pred.total_s, order, pred))
            kept.sort(key=lambda k: k[:2])
            del kept[top:]
    return [k[2] for k in kept]
