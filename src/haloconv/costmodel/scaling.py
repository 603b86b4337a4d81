"""Scaling projections from the cost model: one layer on 1..P workers (strong scaling) and
P x the work on P workers (weak scaling), per partition, with the halo's share of the time.

Shards are resident (a layer of a model, or a chain of filters): each worker pays its halo
exchange and its compute, on its own core and link.  Batch splitting stops at N samples;
spatial splits go on until tiles are all halo.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from haloconv.compute import backends
from haloconv.costmodel.cost import Profile, resident_seconds
from haloconv.tiling.partition import Partition, even_grid
from haloconv.tiling.plan import build
from haloconv.tiling.spec import ConvSpec


def _grown(name: str, spec: ConvSpec, p: int) -> ConvSpec:
    """Weak scaling: the problem made p times bigger along what ``name`` splits."""
    n, cin, *sp = spec.input_shape
    cout = spec.out_channels
    if name == "batch":
        n *= p
    elif name == "channels":
        cout *= p
        if spec.groups > 1:  # grouped: more groups, each of the same width
            cin *= p
    elif name == "rows":
        sp[0 if spec.ndim == 1 else -2] *= p
    else:
        g = even_grid(p, [p] * spec.ndim)
        sp = [s * f for s, f in zip(sp, g)]
    groups = spec.groups * (p if name == "channels" and spec.groups > 1 else 1)
    return dataclasses.replace(spec, input_shape=(n, cin, *sp), weight_shape=(cout, *spec.weight_shape[1:]),
                               groups=groups)


def project(spec: ConvSpec, workers: Sequence[int], profile: Profile, itemsize: int = 4,
            backend: str = "torch") -> dict:
    """name -> {'strong': [s], 'weak': [s], 'halo_share': [0..1]} over ``workers`` (NaN where
    the partition cannot use that many workers), each tile computed by ``backend`` (a filter
    is priced at its own backend's rates, not torch's) where it applies to the problem, else
    by torch (weak scaling over channels makes a single-channel filter a layer)."""

    def priced(s: ConvSpec) -> str:
        return backend if backends.get(backend).unsupported(s) is None else "torch"

    names = ["batch", "rows", "grid", "channels"] + (["batch+grid"] if spec.batch > 1 else [])
    if spec.ndim == 1:
        names.remove("grid")
    out: dict = {}
    for name in names:
        s = {"strong": [], "weak": [], "halo_share": []}
        for p in workers:
            counts = Partition(name).exact_counts(spec, p)
            if counts is None:
                s["strong"].append(float("nan"))
                s["halo_share"].append(float("nan"))
            else:
                t, h = resident_seconds(build(spec, counts, name, p, ownership="even", backend=priced(spec)), profile,
                                        itemsize)
                s["strong"].append(t)
                s["halo_share"].append(h / t if t else 0.0)
            big = _grown(name if name != "batch+grid" else "grid", spec, p)
            wc = Partition(name if name != "batch+grid" else "grid").exact_counts(big, p)
            s["weak"].append(float("nan") if wc is None else
                             resident_seconds(build(big, wc, name, p, ownership="even", backend=priced(big)), profile,
                                              itemsize)[0])
        out[name] = s
    return out


def table(workers: Sequence[int], proj: dict) -> str:
    names = list(proj)
    head = f"{'P':>6}  " + "  ".join(f"{n + ' s (halo%)':>22}" for n in names)
    lines = ["strong scaling, predicted seconds per layer (halo share):", head]
    for i, p in enumerate(workers):
        cells = []
        for n in names:
            t, h = proj[n]["strong"][i], proj[n]["halo_share"][i]
            cells.append(f"{'-':>22}" if math.isnan(t) else f"{t:>13.5f} ({100 * h:4.1f}%)")
        lines.append(f"{p:>6}  " + "  ".join(cells))
    best = [min(names, key=lambda n: (math.inf if math.isnan(proj[n]["strong"][i]) else proj[n]["strong"][i]))
            for i in range(len(workers))]
    lines.append("fastest: " + ", ".join(f"P={p}: {b}" for p, b in zip(workers, best)))
    return "\n".join(lines)
