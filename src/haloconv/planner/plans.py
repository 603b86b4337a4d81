"""haloconv.plan: the Plan of a convolution from its shapes (and, optionally, its filters),
the cost model choosing what the caller leaves to it.  No data, no communication and no
torch: a command that filters an image with OpenCV plans here without importing it."""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from haloconv.compute import backends
from haloconv.costmodel import cost
from haloconv.engines.host import default_workers
from haloconv.options import PlanOptions
from haloconv.planner import choice
from haloconv.tiling.partition import Partition
from haloconv.tiling.plan import Plan, check_args, make_plan
from haloconv.tiling.spec import ConvSpec, IntOrTuple


def check_filters(value: object, name: str = "weight"):
    """Filters (or a bias) given as values: a torch.Tensor or numpy.ndarray of floats."""
    kind = type(value).__module__.split(".")[0]
    if kind not in ("torch", "numpy") or not hasattr(value, "dtype"):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if str(value.dtype).removeprefix("torch.") not in ("float32", "float64"):
        raise TypeError(f"{name} must be float32 or float64, got dtype {value.dtype}")
    return value


def plan(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    bias_shape: Sequence[int] | None = None,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    partition: str | Sequence[int] | Partition = "auto",
    workers: int | None = None,
    worker_weights: Sequence[float] | None = None,
    ownership: str = "aligned",
    exchange: str = "neighbours",
    pipeline: int = 1,
    backend: str | None = None,
    memory_budget: int | None = None,
    profile: cost.Profile | str | None = None,
    engine: str = "threads",
) -> Plan:
    """The Plan for a convolution of these shapes: who computes which output box, from
    which input, with which halo from whom (no data, no communication).

    Parameters
    ----------
    x_shape : sequence of int
        (N, C_in, *spatial); a tensor or array is taken for its shape.
    weight_shape : sequence of int, or the filters
        (C_out, C_in / groups, *kernel).  The filters themselves (a tensor or array) let
        backends whose use depends on their values (separable) be considered too.
    bias_shape : sequence of int, optional
    stride, padding, dilation, groups, padding_mode
        As haloconv.conv's.
    partition : str, sequence of int or Partition
        As haloconv.conv's; 'auto' lets the cost model choose among the partitions,
        hybrids and a single worker the one with the least predicted time.
    workers : int, optional
        Default: ``len(worker_weights)``, the product of explicit split counts, or the
        cores.
    worker_weights : sequence of float, optional
        Relative worker speeds: shares in proportion.
    ownership : {'aligned', 'even'}
        'aligned': a tile owns the input its first outputs start on (one-sided halos);
        'even': the input split like the output (consecutive layers chain their shards).
    exchange : {'neighbours', 'master'}
        Halos swapped between neighbours, or whole windows sent by the master.
    pipeline : int
        Pieces each halo message is cut into, so compute overlaps its arrival.
    backend : str, optional
        As haloconv.conv's; 'auto': the cost model's fastest.
    memory_budget : int or str, optional
        Data bytes per worker: a worker's window, filters and output as the cost model
        counts them (not the process's resident memory; conv_file's budget is that).
    profile : Profile or str, optional
        The cost model's measurements (default: what `haloconv calibrate` wrote).
    engine : {'threads', 'processes'}
        The engine whose costs the cost model ranks by: as haloconv.conv's and
        haloconv.execute's default, 'threads'; 'processes' for worker processes (a
        LocalCluster, torchrun ranks).

    Returns
    -------
    Plan
        Frozen; ``print(plan)`` shows its tiles, ``plan.summary()`` one line.

    Raises
    ------
    ValueError
        Shapes, arguments or a partition that do not fit, naming the parameter.
    TypeError
        Filters that are not a float32/float64 tensor or array.

    Examples
    --------
    >>> import haloconv
    >>> p = haloconv.plan((1, 1, 600, 512), (1, 1, 3, 3), padding=1, partition="grid", workers=4)
    >>> p.summary()
    'grid 1x1x2x2 over (N, C_out, H, W): 4 tiles on 4 workers, halo 0.73% of the input, backend opencv'
    >>> [str(t.needed) for t in p.tiles][:2]  # the input each tile reads, halo included
    ['[0:1, 0:1, -1:301, -1:257]', '[0:1, 0:1, -1:301, 255:513]']
    """
    values = None  # the filters themselves, when given: backends that depend on their values can be chosen
    if hasattr(weight_shape, "shape"):
        values = check_filters(weight_shape)
        weight_shape = tuple(values.shape)
    if hasattr(x_shape, "shape"):
        x_shape = tuple(x_shape.shape)
    if bias_shape is not None and hasattr(bias_shape, "shape"):
        bias_shape = tuple(bias_shape.shape)
    spec = ConvSpec.from_args(
        x_shape, weight_shape, bias_shape, stride=stride, padding=padding,
        dilation=dilation, groups=groups, padding_mode=padding_mode,
    )
    how = PlanOptions.of(partition=partition, workers=workers, worker_weights=worker_weights, ownership=ownership,
                         exchange=exchange, pipeline=pipeline, backend=backend, memory_budget=memory_budget,
                         profile=profile, engine=engine)
    return plan_for(spec, how, values)


def resolved(spec: ConvSpec, how: PlanOptions) -> PlanOptions:
    """``how`` with its defaults filled in: the workers (``len(worker_weights)``, the
    product of explicit split counts, or the cores) and the backend (the spec's default)."""
    workers, backend = how.workers, how.backend
    if workers is None:
        if how.worker_weights is not None:
            workers = len(how.worker_weights)
        elif how.partition.kind == "counts":
            workers = max(1, math.prod(how.partition.split))  # an explicit split: one worker per tile
        else:
            workers = default_workers()
    if backend is None:
        backend = backends.default_for(spec)
    if (workers, backend) == (how.workers, how.backend):
        return how
    return replace(how, workers=workers, backend=backend)


def plan_for(spec: ConvSpec, how: PlanOptions, values=None) -> Plan:
    """The Plan for ``spec`` under ``how`` (haloconv.plan below its keywords): made from
    the options, or chosen by the cost model where they leave it a choice (partition or
    backend 'auto', a memory budget); ``values``: the filters, when the caller has them
    (backends that depend on them, such as separable, are then considered)."""
    how = resolved(spec, how)
    if how.backend != "auto":
        backends.check(how.backend, spec, values)
    check_args(spec, how.partition, how.workers, how.worker_weights, how.ownership, how.exchange, how.pipeline,
               "torch" if how.backend == "auto" else how.backend)
    # a plan is kept, as cuDNN keeps its algorithm per configuration: a call of the same
    # shapes and options (and, where the cost model chooses, filters and profile) takes the
    # same plan again instead of making it anew
    key = (spec, how.partition, how.workers, how.worker_weights, how.ownership, how.exchange, how.pipeline,
           how.backend, how.memory_budget, how.engine)
    if how.chosen_by_model:
        key += (_profile_key(how.profile), _values_key(values))
    with _CHOSEN_LOCK:  # calls from several threads share it
        chosen = _CHOSEN.get(key)
        if chosen is not None:
            _CHOSEN.move_to_end(key)
            return chosen
    if not how.chosen_by_model:
        chosen = make_plan(spec, how.partition, how.workers, how.worker_weights, how.ownership, how.exchange,
                           how.pipeline, how.backend)
    else:
        prof = load(how.profile)
        if how.partition.kind == "auto":
            chosen = choice.choose(spec, how, prof, weight=values)
        else:  # a given partition: the model picks the backend (and checks the budget)
            base = make_plan(spec, how.partition, how.workers, how.worker_weights, how.ownership, how.exchange,
                             how.pipeline)
            chosen = choice.rank_backends(base, prof, how, weight=values)[0].plan
    with _CHOSEN_LOCK:
        _CHOSEN[key] = chosen
        if len(_CHOSEN) > CHOSEN_KEPT:
            _CHOSEN.popitem(last=False)
    return chosen


def load(profile: object) -> cost.Profile:
    """The cost model's Profile: as given, from a path, or (None) what calibrate wrote."""
    return profile if isinstance(profile, cost.Profile) else cost.load_profile(profile)


# the plans made, by configuration, the least recently used dropped first
CHOSEN_KEPT = 64  # a plan of many workers holds every tile: a few MB
_CHOSEN: OrderedDict[tuple, Plan] = OrderedDict()
_CHOSEN_LOCK = threading.Lock()


def forget() -> None:
    """Drop every kept plan (benchmarks that time planning afresh; tests)."""
    with _CHOSEN_LOCK:
        _CHOSEN.clear()


def _profile_key(profile: cost.Profile | str | os.PathLike | None) -> tuple:
    """What the profile a plan is chosen with depends on: its values, or its file as it is
    now (a recalibration rewrites it: a new key)."""
    if isinstance(profile, cost.Profile):
        return ("values", repr(profile))
    path = os.fspath(profile) if profile is not None else cost.default_profile_file()
    try:
        st = os.stat(path)
    except OSError:  # no file: the defaults (or, for a path given, the error load_profile raises)
        return ("file", path, None)
    return ("file", path, st.st_mtime_ns, st.st_size)


def _values_key(values) -> tuple | None:
    """The filters' values, for the backends whose use depends on them (separable)."""
    if values is None:
        return None
    if hasattr(values, "detach"):  # a torch.Tensor (check_filters let only tensors and arrays in)
        values = values.detach().cpu().numpy()
    data = np.ascontiguousarray(values)
    if data.nbytes <= VALUES_KEPT_WHOLE:  # a filter's few values are their own key (exact, no hash)
        return (str(data.dtype), data.shape, data.tobytes())
    import hashlib  # only here: its import (OpenSSL's) costs more than a small filter's call

    return (str(data.dtype), data.shape, hashlib.blake2b(data.tobytes(), digest_size=16).digest())


VALUES_KEPT_WHOLE = 4096  # bytes: a 32x32 float32 kernel
