"""Options as values: what a call asks of the planner (PlanOptions), of the engine that runs
a plan (RunOptions) and of a streamed run (StreamOptions), each read and checked once at
a face (haloconv.conv, haloconv.plan, haloconv.execute, haloconv.conv_file, the CLI), with
one error per mistake naming the parameter; below the faces, functions take these values
instead of their keywords (docs/architecture.md, "Options are values").

Plain values, no torch: a held LocalCluster or a cost-model Profile travels as the object
it is, checked where it is used (engines/dispatch, planner)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from haloconv import units
from haloconv.tiling.partition import Partition

OWNERSHIPS = ("aligned", "even")
EXCHANGES = ("neighbours", "master")
ENGINES = ("threads", "processes")  # by name (the cost model prices both); or a LocalCluster held by the caller
SCHEDULES = ("static", "dynamic")
ON_FAILURE = ("retry", "fail")


def _positive_int(value: object, name: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) and not _is_numpy_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _is_numpy_int(value: object) -> bool:
    """A numpy integer scalar (np.int64(2)): taken as the int it is, as torch takes it."""
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu" \
        and getattr(value, "ndim", 1) == 0


def _one_of(value: object, choices: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class PlanOptions:
    """How to split a convolution: what the planner chooses from (haloconv.plan's keywords).

    ``workers`` None: the planner's default (``len(worker_weights)``, the product of
    explicit split counts, or the cores); ``backend`` None: the spec's default
    (compute/backends.default_for); ``profile``: a cost-model Profile, a path to one, or
    None (what `haloconv calibrate` wrote); ``engine``: the engine whose costs rank the
    candidates."""

    partition: Partition = field(default_factory=lambda: Partition.of("auto"))
    workers: int | None = None
    worker_weights: tuple[float, ...] | None = None
    ownership: str = "aligned"
    exchange: str = "neighbours"
    pipeline: int = 1
    backend: str | None = None
    memory_budget: int | None = None
    profile: object = None
    engine: str = "threads"

    @classmethod
    def of(cls, *, partition: object = "auto", workers: object = None, worker_weights: object = None,
           ownership: object = "aligned", exchange: object = "neighbours", pipeline: object = 1,
           backend: object = None, memory_budget: object = None, profile: object = None,
           engine: object = "threads") -> PlanOptions:
        """The keywords as a face takes them, checked: a TypeError or ValueError naming the
        first that is wrong."""
        part = Partition.of(partition)
        workers = _positive_int(workers, "workers", allow_none=True)
        if worker_weights is not None:
            if isinstance(worker_weights, (str, bytes)) or not isinstance(worker_weights, Sequence) and not hasattr(
                    worker_weights, "__len__"):
                raise TypeError(f"worker_weights must be a sequence of numbers, got {worker_weights!r}")
            weights = tuple(worker_weights)
            if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0
                       for w in weights):
                raise ValueError(f"worker_weights must be finite positive numbers, got {list(weights)}")
            if workers is not None and len(weights) != workers:
                raise ValueError(f"worker_weights must have one entry per worker ({workers}), got {len(weights)}")
            worker_weights = weights
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {backend!r}")
        return cls(
            partition=part, workers=workers, worker_weights=worker_weights,
            ownership=_one_of(ownership, OWNERSHIPS, "ownership"), exchange=_one_of(exchange, EXCHANGES, "exchange"),
            pipeline=_positive_int(pipeline, "pipeline"), backend=backend,
            memory_budget=None if memory_budget is None else units.byte_count(memory_budget, "memory_budget"),
            profile=profile, engine=_one_of(engine, ENGINES, "engine"),
        )

    @property
    def chosen_by_model(self) -> bool:
        """Whether the cost model chooses anything: the partition, the backend, or a split
        that fits the memory budget."""
        return self.partition.kind == "auto" or self.backend == "auto" or self.memory_budget is not None


@dataclass(frozen=True)
class RunOptions:
    """How to run a plan (haloconv.execute's keywords, and the CLI's): the engine
    ('threads', 'processes', 'torchrun' under torch.distributed, or a held LocalCluster),
    what a lost worker does, the threads engine's concurrency, the processes engine's
    schedule, its silence limit, whether it measures the workers' speeds first, and a
    ``progress(done, total)`` callback."""

    engine: object = "threads"
    on_failure: str = "retry"
    threads: int | None = None
    schedule: str = "static"
    tiles: int | None = None
    timeout: float = 60.0
    measure_speeds: bool = False
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, *, engine: object = "threads", on_failure: object = "retry", threads: object = None,
           schedule: object = "static", tiles: object = None, timeout: object = 60.0,
           measure_speeds: bool = False, progress: Callable[[int, int], None] | None = None) -> RunOptions:
        if isinstance(engine, str) and engine not in (*ENGINES, "torchrun"):
            raise ValueError(f"engine must be one of {sorted(ENGINES)} or a LocalCluster, got {engine!r}")
        on_failure = _one_of(on_failure, ON_FAILURE, "on_failure")
        schedule = _one_of(schedule, SCHEDULES, "schedule")
        threads = _positive_int(threads, "threads", allow_none=True)
        tiles = _positive_int(tiles, "tiles", allow_none=True)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        pool = engine == "processes"
        if engine == "threads" and (schedule != "static" or tiles is not None):
            raise ValueError("schedule and tiles apply to engine='processes'")
        if not isinstance(engine, str) and (schedule != "static" or tiles is not None):
            raise ValueError("schedule='dynamic' on a LocalCluster you hold: cluster.run_dynamic(plan, ...) with a "
                             "plan of many tiles")
        if threads is not None and engine != "threads":
            raise ValueError("threads applies to engine='threads'")
        if measure_speeds and not pool:
            raise ValueError("measuring the workers' speeds applies to engine='processes'")
        return cls(engine, on_failure, threads, schedule, tiles, float(timeout), bool(measure_speeds), progress)


@dataclass(frozen=True)
class StreamOptions:
    """How to run a streamed (out-of-core) convolution (haloconv.conv_file's keywords
    below the conv's): the resident bytes each process may hold, the processes or compute
    threads, the compute's float dtype (a numpy dtype), what to do with an existing output
    (``resume``, ``overwrite``), durability (``sync``), what a lost worker does, the output
    block when given, and a ``progress(done, total)`` callback."""

    memory_budget: int
    workers: int = 1
    dtype: object = None  # numpy float32 or float64; None: float32
    resume: bool = False
    overwrite: bool = False
    sync: bool = False
    on_failure: str = "retry"
    timeout: float = 60.0
    block: tuple[int | None, ...] | None = None
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)
    throttle: dict[int, float] | None = field(default=None, compare=False)  # rank -> slowdown (tests: replace())

    @classmethod
    def of(cls, *, memory_budget: object, workers: object = 1, dtype: object = None, resume: object = False,
           overwrite: object = False, sync: object = False, on_failure: object = "retry", timeout: object = 60.0,
           block: object = None, progress: Callable[[int, int], None] | None = None) -> StreamOptions:
        import numpy as np

        for name, value in (("resume", resume), ("overwrite", overwrite), ("sync", sync)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return cls(units.byte_count(memory_budget, "memory_budget"), _positive_int(workers, "workers"),
                   float_dtype(np.float32 if dtype is None else dtype), resume, overwrite, sync,
                   _one_of(on_failure, ON_FAILURE, "on_failure"), float(timeout),
                   None if block is None else tuple(block), progress)


def float_dtype(dtype: object):
    """A streamed run's dtype, given as a torch or numpy dtype or a name: float32 or float64
    (a numpy dtype)."""
    import numpy as np

    try:  # a torch dtype prints as 'torch.float32'; numpy takes its types, dtypes and names
        name = str(dtype).removeprefix("torch.") if type(dtype).__module__ == "torch" else np.dtype(dtype).name
    except TypeError:
        name = None
    if dtype is None:  # numpy would read None as float64
        name = None
    if name not in ("float32", "float64"):
        raise TypeError(f"dtype must be float32 or float64 (a torch or numpy dtype), got {dtype}")
    return np.dtype(name)
