"""haloconv.plan: the Plan of a convolution from its shapes (and, optionally, its filters),
the cost model choosing what the caller leaves to it.  No data, no communication and no
torch: a command that filters an image with OpenCV plans here without importing it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from haloconv import units
from haloconv.compute import backends
from haloconv.engines.host import default_workers
from haloconv.model import cost
from haloconv.planning.partition import Partition
from haloconv.planning.plan import Plan, check_args, make_plan
from haloconv.planning.spec import ConvSpec, IntOrTuple


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
    engine: str = "processes",
) -> Plan:
    """The Plan for a convolution of these shapes (no data, no communication).

    ``partition='auto'`` (or ``backend='auto'``) lets the cost model choose: the candidate
    (partitions, hybrids, a single worker; backends) with the least predicted time on
    ``engine`` under ``profile`` (default: the calibrated one, see `haloconv calibrate`),
    within ``memory_budget`` bytes per worker — counted as the data a worker's tile holds
    (its window, filters and output, as the cost model predicts them), not the process's
    resident memory; conv_file's ``memory_budget`` is the whole process (see its docstring).
    ``weight_shape`` may be the filters themselves (a tensor or array): then backends whose
    use depends on the filter's values (compute/backends: separable) are considered too."""
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
    part = Partition.of(partition)  # a name, split counts or a Partition (clear errors naming partition)
    if workers is None:
        if worker_weights is not None:
            workers = len(worker_weights)
        elif part.kind == "counts":
            workers = max(1, math.prod(part.split))  # an explicit split: one worker per tile
        else:
            workers = default_workers()
    if backend is None:
        backend = backends.default_for(spec)
    if backend != "auto":
        backends.check(backend, spec, values)
    check_args(spec, partition, workers, worker_weights, ownership, exchange, pipeline,
               "torch" if backend == "auto" else backend)
    if memory_budget is not None:
        memory_budget = units.byte_count(memory_budget, "memory_budget")
    if part.kind == "auto" or backend == "auto" or memory_budget is not None:
        prof = profile if isinstance(profile, cost.Profile) else cost.load_profile(profile)
        if part.kind == "auto":
            return cost.choose(spec, workers, prof, backend=backend, engine=engine, memory_budget=memory_budget,
                               ownership=ownership, exchange=exchange, weights=worker_weights, weight=values)
        # a given partition: the model picks the backend (and checks the budget)
        base = make_plan(spec, partition, workers, worker_weights, ownership, exchange, pipeline)
        return cost.rank_backends(base, prof, backend, engine, memory_budget, weight=values)[0].plan
    return make_plan(spec, partition, workers, worker_weights, ownership, exchange, pipeline, backend)
