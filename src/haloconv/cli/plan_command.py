"""`haloconv plan`: rank the candidate partitions by the cost model's prediction, draw the
chosen one, project strong and weak scaling."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from haloconv import units
from haloconv.costmodel import cost, scaling
from haloconv.files import images, named_kernels

from . import options, report
from .console import Console


def _problem_shapes(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[int, ...], np.ndarray | None, int, str]:
    """(x shape, weight shape, the filter's values (--kernel's; None for --weight-shape),
    groups, name) without making data for --random.  The values, as `haloconv run` has
    them: which backends apply can depend on them (separable: rank-1 kernels)."""
    if args.random:
        x_shape = options.random_shape(args.random)
        name = f"random{'x'.join(map(str, x_shape))}"
    else:
        path = images.sample_path(args.sample) if args.sample else Path(args.input)
        x_shape, name = images.read_input(path, args.dtype, args.integers, args.layout).x.shape, path.stem
    if args.weight_shape:
        w_shape = options.random_shape(args.weight_shape) if args.weight_shape.count("x") >= 3 else None
        if w_shape is None or len(w_shape) != len(x_shape):
            raise ValueError(f"--weight-shape must be C_out x C_in/groups x kernel... matching the input, "
                             f"got {args.weight_shape!r}")
        return tuple(x_shape), tuple(w_shape), None, x_shape[1] // w_shape[1], name
    weight, groups = named_kernels.load_kernel(args.kernel, x_shape[1], len(x_shape) - 2)
    return tuple(x_shape), tuple(weight.shape), weight, groups, name


def command(args: argparse.Namespace, console: Console) -> int:
    """A dry run of `haloconv run`: the plan it would make (its first line is run's `plan:`
    line for the same arguments), the candidates ranked at the prices run's planner sees,
    the chosen plan's tiles, and, asked, a drawing and scaling projections."""
    from haloconv.planner import plans

    from . import plots

    x_shape, w_shape, values, groups, name = _problem_shapes(args)
    spec = options.spec(args, x_shape, w_shape, groups)
    args.engine = options.default_engine(args, spec)  # the one `haloconv run` would use
    how = plans.resolved(spec, options.plan_options(args, args.workers))
    chosen = plans.plan_for(spec, how, values)  # what `haloconv run` makes of the same arguments
    console.say(f"plan: {chosen.summary()}, engine {args.engine}")
    prof = plans.load(how.profile)
    itemsize = 8 if args.dtype == "float64" else 4
    console.say(f"input {name} {list(x_shape)}, weight {list(w_shape)}, groups {groups}, {how.workers} workers, "
                f"engine {args.engine}; profile: {prof.source}")
    ranked = _ranked(args.top, chosen, how, prof, itemsize, values)
    mine = cost.predict(chosen, prof, itemsize, how.engine)
    ranked = [mine] + [q for q in ranked if q.plan.splits != chosen.splits or q.plan.backend != chosen.backend]
    console.say(report.candidates_table(ranked[: args.top]))
    best = mine
    console.say(f"\nchosen: {best.label}")
    console.say(str(best.plan))
    if args.png:
        console.say(f"wrote {plots.plan_png(best.plan, args.png)}")
    if args.simulate_workers:
        counts = options.int_list(args.simulate_workers, "--simulate-workers")
        counts = (counts,) if isinstance(counts, int) else counts
        if any(c < 1 for c in counts):
            raise ValueError(f"--simulate-workers must be positive ints, got {args.simulate_workers!r}")
        sim = dataclasses.replace(prof, cores=max(counts))
        if args.bandwidth:
            sim.bandwidth_Bps = units.quantity(args.bandwidth, units.BYTES, "--bandwidth")
        if args.latency:
            sim.latency_s = units.quantity(args.latency, units.SECONDS, "--latency")
        proj = scaling.project(spec, counts, sim, itemsize, backend=best.plan.backend)
        console.say(scaling.table(counts, proj))
        console.say(f"(each tile on backend {best.plan.backend} where it applies, the chosen candidate's)")
        title = (f"{list(x_shape)} * {list(w_shape)}: predicted, {sim.bandwidth_Bps / 1e9:g} GB/s, "
                 f"{sim.latency_s * 1e6:g} us, one core per worker")
        if args.scaling_png:
            console.say(f"wrote {plots.scaling_png(counts, proj, args.scaling_png, title)}")
    return 0


def _ranked(top: int, chosen, how, prof, itemsize: int, values) -> list:
    """The ``top`` candidates `haloconv run`'s planner weighs, cheapest first, predicted:
    every split when the partition is 'auto'; else the chosen plan's split with each
    backend the options leave open."""
    from haloconv.planner import choice

    if how.partition.kind == "auto":
        return choice.best(chosen.spec, how, prof, itemsize, values, top)
    if how.backend == "auto" or how.memory_budget is not None:
        return choice.rank_backends(chosen, prof, how, itemsize, values)[:top]
    return [cost.predict(chosen, prof, itemsize, how.engine)]
